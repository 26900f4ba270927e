"""Config snippets shared by the tests."""

from __future__ import annotations

#: The LAN view most tests use: loopback 127.0.0.1 is the LAN client, and the public address
#: 203.0.113.1 becomes the LAN server 192.0.2.2. Appended after the test's own keys.
REWRITE_VIEW = """\
views:
  - name: lan
    clients: [127.0.0.1/32]
    rewrite:
      - from: 203.0.113.1
        to: 192.0.2.2
"""
