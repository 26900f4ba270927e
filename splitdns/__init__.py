"""splitdns: a LAN DNS forwarder that rewrites public answers into internal addresses.

Layers, imports running downwards only (tests/test_layers.py keeps it so):
cli -> commands -> serve -> answer -> upstream | nat -> config -> wire.
"""

__version__ = "0.1.0"
