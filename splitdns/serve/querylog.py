"""One JSON line per query, when enabled: what a household admin greps when a name misbehaves.

Fields: time, client (or "hidden" with the privacy switch), name, type, view, outcome,
rewritten (name, from, to, rule), upstream, latency_ms. Client-controlled strings are JSON
escaped, never interpreted.
"""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Sequence
from typing import TextIO

from splitdns.answer.rewrite import Change
from splitdns.config.model import QueryLogSettings


class QueryLog:
    def __init__(self, settings: QueryLogSettings, stream: TextIO | None = None) -> None:
        self.settings = settings
        self.enabled = settings.enabled
        self._stream: TextIO | None = stream
        if self.enabled and stream is None:
            # Opened now, before root is dropped, so a root-owned log directory still works.
            if settings.path == "-":
                self._stream = sys.stderr
            else:
                self._stream = open(settings.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def record(
        self,
        client: str,
        name: str,
        qtype: int,
        view: str | None,
        outcome: str,
        latency: float,
        changes: Sequence[Change] = (),
        upstream: str | None = None,
    ) -> None:
        if self._stream is None:
            return
        entry = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            "client": "hidden" if self.settings.hide_clients else client,
            "name": name,
            "type": qtype,
            "view": view,
            "outcome": outcome,
            "rewritten": [
                {
                    "name": c.name,
                    "from": str(c.old),
                    "to": None if c.new is None else str(c.new),
                    "rule": c.rule,
                    **({"in": c.field} if c.field else {}),
                }
                for c in changes
            ],
            "upstream": upstream,
            "latency_ms": round(latency * 1000, 3),
        }
        self._stream.write(json.dumps(entry, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self._stream is not None and self._stream is not sys.stderr:
            self._stream.close()
        self._stream = None
