"""The test zone's head, shared: every NSD the tests start serves example.test with it."""

from __future__ import annotations

HEAD = """\
$ORIGIN example.test.
$TTL 300
@    SOA  ns1 hostmaster 1 3600 600 86400 60
@    NS   ns1
ns1  A    198.51.100.53
"""


def example_zone(*lines: str) -> str:
    """example.test with its SOA, NS and `lines` (zone-file records, relative names)."""
    return HEAD + "".join(f"{line}\n" for line in lines)
