"""What the dashboard shows, as JSON-ready dicts, read from the running server (nothing here
changes it): health, rules with their counters, the clients seen, and checked request values.
"""

from __future__ import annotations

import ipaddress
import os
import time
from typing import Any

from splitdns import __version__, wire
from splitdns.config.model import EMBEDDED_SOURCE, Rule
from splitdns.serve import follow
from splitdns.serve.published import QTYPES
from splitdns.serve.server import Server
from splitdns.web.livefeed import Filter, LiveFeed

OUTCOMES = (
    "cached",
    "stale",
    "forwarded",
    "rewritten",
    "filtered",
    "local",
    "refused",
    "servfail",
    "formerr",
    "notimp",
)


def build_name() -> str:
    """Which build runs: the compiled modules (mypyc, scripts/build-compiled, the image's
    default) or pure Python (the same source; `pip install .`, or where compiling failed)."""
    return (
        "build compiled (mypyc)" if (wire.__file__ or "").endswith(".so") else "build pure Python"
    )


EXPLAIN_TYPES = tuple(t for t in QTYPES.values() if t != "ANY")


class BadRequest(ValueError):
    """A request value that cannot be used; its text is the reason the client is given."""


def status(server: Server) -> dict[str, Any]:
    config = server.config
    listeners = []
    for kind, shown in server.bound:
        entry: dict[str, Any] = {"kind": kind, "address": str(shown)}
        if kind in ("dot", "doh") and server.encrypted.pin:
            entry["pin_sha256"] = server.encrypted.pin
        listeners.append(entry)
    reload = None
    if server.last_reload is not None:
        at, why, error = server.last_reload
        reload = {"at": round(at, 1), "why": why, "ok": error is None, "error": error}
    cache = server.cache
    hits, misses = cache.stats.hits, cache.stats.misses
    queries: dict[str, int] = {}
    for (_, _, outcome), n in list(server.counts.queries.items()):
        queries[outcome] = queries.get(outcome, 0) + n
    return {
        "version": __version__,
        "build": build_name(),
        "now": round(time.time(), 1),
        "serving_since": round(server.started_at, 1),
        "config_file": (
            "embedded default"
            if config.source == EMBEDDED_SOURCE
            else os.path.abspath(config.source)
        ),
        "reload": reload,
        "listeners": listeners,
        "upstreams": upstreams(server),
        "queries": queries,
        "cache": {
            "entries": len(cache),
            "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
        },
        "views": [v.name for v in config.views],
        "hide_clients": config.query_log.hide_clients,
    }


def _mapping_file(path: str) -> str:
    return "embedded default" if path == EMBEDDED_SOURCE else os.path.abspath(path)


def upstreams(server: Server) -> list[dict[str, Any]]:
    """Each upstream: in rotation or not, latency (smoothed, p50/p99 of the last minutes),
    answers used and failures by kind."""
    stats = server.upstreams.stats
    errors: dict[str, dict[str, int]] = {}
    for (name, kind), n in list(stats.errors_by.items()):
        errors.setdefault(name, {})[kind] = n
    out = []
    for name, up, srtt in server.upstreams.upstream_health():
        p50, p99 = server.history.percentiles(name)
        out.append(
            {
                "name": name,
                "up": up,
                "srtt_ms": None if srtt is None else round(srtt * 1000, 3),
                "p50_ms": p50,
                "p99_ms": p99,
                "answers": stats.answered.get(name, 0),
                "errors": errors.get(name, {}),
            }
        )
    return out


def rules(server: Server) -> list[dict[str, Any]]:
    """Every rewrite rule, its counter and the last names it rewrote; a follow/interface rule
    with its current public address and when that last changed."""
    counts = server.counts
    out = []
    for view in server.config.views:
        for rule in view.rules:
            recent = counts.recent.get((view.name, rule.index), ())
            out.append(
                {
                    "view": view.name,
                    "index": rule.index,
                    "rule": str(rule),
                    "from": _source(rule),
                    "to": str(rule.target),
                    "names": [str(n) for n in rule.names],
                    "rewrites": counts.rewrites.get((view.name, rule.index, "address"), 0),
                    "hints": sum(
                        counts.rewrites.get((view.name, rule.index, f), 0)
                        for f in ("ipv4hint", "ipv6hint")
                    ),
                    "recent": [
                        {"at": round(at, 1), "name": _name_text(name)}
                        for at, name in reversed(recent)
                    ],
                    "dynamic": _dynamic(server, rule),
                }
            )
    return out


def _source(rule: Rule) -> str:
    if rule.follow:
        return f"follow {rule.follow}"
    if rule.interface:
        return f"interface {rule.interface}"
    return str(rule.source)


def _dynamic(server: Server, rule: Rule) -> dict[str, Any] | None:
    key = follow.source_key(rule)
    if key is None:
        return None
    changed = server.follow_changes.get(key)
    return {
        "source": rule.follow or rule.interface,
        "kind": "follow" if rule.follow else "interface",
        "current": str(rule.source.network_address) if rule.active else None,
        "changed_at": None if changed is None else round(changed, 1),
    }


def _name_text(name: str | bytes) -> str:
    if isinstance(name, str):
        return name
    try:
        return wire.read_name(bytes(wire.HEADER_LEN) + name, wire.HEADER_LEN)[0]
    except wire.WireError:
        return "?"


def local_names(server: Server) -> dict[str, Any]:
    """The dynamic zones' names: who (the name), where (its records), since when, from what
    (an update and its key, or a lease file). Updates' names first, then leases', by name."""
    local = server.local
    if local is None:
        return {"enabled": False, "names": []}
    rows = []
    for zone in local.store.zones.values():
        for kind, held in (("update", zone.names), ("lease", zone.leased)):
            for name, entry in sorted(held.items()):
                shown = [
                    _record(rtype, rdata) for rtype, (_, rdatas) in entry.rrsets.items()
                    for rdata in rdatas
                ]  # fmt: skip
                rows.append({"name": name, "zone": zone.name, "kind": kind, "records": shown,
                             "since": round(entry.since, 1), "source": entry.source})  # fmt: skip
    return {"enabled": True, "names": rows[:NAMES_SHOWN], "total": len(rows)}


NAMES_SHOWN = 500


def _record(rtype: int, rdata: bytes) -> str:
    """A record's type and data as text ("A 192.0.2.10", "PTR laptop.lan.")."""
    name = QTYPES.get(rtype, f"TYPE{rtype}")
    if rtype in (wire.TYPE_A, wire.TYPE_AAAA):
        return f"{name} {ipaddress.ip_address(rdata)}"
    if rtype in (wire.TYPE_PTR, wire.TYPE_CNAME):
        try:
            return f"{name} {wire.read_name(rdata, 0, compressed=False)[0]}."
        except wire.WireError:
            return f"{name} ?"
    return f"{name} ({len(rdata)} bytes)"


def clients(server: Server, feed: LiveFeed) -> dict[str, Any]:
    hidden = server.config.query_log.hide_clients
    since = feed.watching_since
    return {
        "hidden": hidden,
        "watching_since": None if since is None else round(since, 1),
        "clients": [] if hidden else feed.top_clients(),
    }


# ------------------------------------------------------------------ request values


def stream_filter(params: dict[str, str], server: Server) -> Filter:
    """The live stream's filter from the query string; BadRequest names the bad value."""
    _only(params, {"client", "name", "view", "outcome", "rewritten"})
    client = params.get("client", "").strip()
    if client:
        client = str(address(client, "client"))
    view = params.get("view", "").strip()
    if view and view not in {v.name for v in server.config.views}:
        raise BadRequest(f"view: no view is named {view!r}")
    outcome = params.get("outcome", "").strip().lower()
    if outcome and outcome not in OUTCOMES:
        raise BadRequest(f"outcome: one of {', '.join(OUTCOMES)}")
    rewritten = params.get("rewritten", "").strip().lower()
    if rewritten not in ("", "0", "1", "true", "false", "on", "off"):
        raise BadRequest("rewritten: 1 or 0")
    name = params.get("name", "").strip().lower().rstrip(".")
    if len(name) > 253 or any(ch.isspace() or ch in "\\\"'<>" for ch in name):
        raise BadRequest("name: part of a domain name (letters, digits, '-', '.')")
    return Filter(client, name, view, outcome, rewritten in ("1", "true", "on"))


def explain_question(params: dict[str, str]) -> tuple[str, str, str]:
    """(name, client, type) for explain; BadRequest names the bad value."""
    _only(params, {"name", "client", "type"})
    name = params.get("name", "").strip().rstrip(".")
    if not name:
        raise BadRequest("name: give the name to look up")
    try:
        wire.encode_name(name)
    except (wire.WireError, ValueError, UnicodeError):
        raise BadRequest(f"name: {name[:80]!r} is not a domain name") from None
    client = str(address(params.get("client", "").strip() or "127.0.0.1", "client"))
    qtype = params.get("type", "A").strip().upper() or "A"
    if qtype not in EXPLAIN_TYPES:
        raise BadRequest(f"type: {qtype[:20]!r}: one of {', '.join(EXPLAIN_TYPES)}")
    return name, client, qtype


def address(text: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise BadRequest(f"{what}: {text[:60]!r} is not an IP address") from None


def _only(params: dict[str, str], known: set[str]) -> None:
    unknown = sorted(set(params) - known)
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0]!r} (known: {', '.join(sorted(known))})")
