"""Talking to upstream servers: plain UDP/TCP, DoT and DoH transports, bootstrap, health, groups
with a strategy and one deadline, per-domain routes. Imports config and wire only."""
