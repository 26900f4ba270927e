"""Deciding the answer: admission and views, the handler chain, cache, rewrite, rebinding guard,
local answers, rate limits. Imports upstream, config and wire; never a socket of its own."""
