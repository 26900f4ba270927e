"""The running server: its lifecycle (start, reload, stop), the query path (the express lane,
replays, the chain's hand-off), the query log, followed addresses, explain, the file watch, and
what it publishes for the operator's side (serve/published.py). Imports listen, limits, answer
and everything below; never web."""
