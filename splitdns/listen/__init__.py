"""The transports: one module per way a query arrives (wildcard UDP, DoT and DoH, PROXY v2) and
what they need (certificates, ports and who holds them, privileges, the log of dropped
connections). A DoT deadline or a DoH status code is made here. Imports limits, config, wire."""
