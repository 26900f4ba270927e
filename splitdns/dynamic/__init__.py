"""The LAN's own names: zones splitdns holds, changed by RFC 2136 updates and lease files.
Imports config and wire (and dnspython); answer and serve read and change them."""
