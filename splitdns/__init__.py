"""splitdns: a LAN DNS forwarder that rewrites public answers into internal addresses."""

__version__ = "0.1.0"
