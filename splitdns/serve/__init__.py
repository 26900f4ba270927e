"""Serving clients: the Server and its UDP/TCP listeners, wildcard UDP, client trap, privileges,
event loops, query log, metrics, followed addresses. Imports answer and everything below it."""
