"""The resource limits: the connection budget and per-address shares, descriptor budgets, the
in-flight cap, memory given back after a burst. Nothing here knows DNS: it counts and refuses.
Imports config only."""
