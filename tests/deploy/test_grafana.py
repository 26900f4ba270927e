"""deploy/grafana/splitdns.json, the dashboard for Prometheus users: every metric its queries
name exists in a live /metrics scrape of the real server (after a rewrite, a hit, a miss), so
the dashboard cannot drift from what splitdns exports."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

from tests.support.fakeupstream import FakeUpstream
from tests.support.metrics import scrape
from tests.support.servers import SplitDNS, free_port

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "splitdns.json"


def queried_metrics() -> set[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    exprs += [v["query"] for v in board["templating"]["list"] if isinstance(v.get("query"), str)]
    return {m for e in exprs for m in re.findall(r"\bsplitdns_[a-z0-9_]+", e)}


def declared(port: int) -> set[str]:
    """Every family /metrics declares (`# TYPE`), with the names its samples take: a counter
    nothing has counted yet has no sample line, but is exported all the same."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            base = name.removesuffix("_total")
            names |= {name, base + "_total"} if kind == "counter" else {name}
            if kind == "histogram":
                names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
    return names


def test_every_metric_the_dashboard_queries_is_exported(
    tmp_path: Path, fakes: list[FakeUpstream]
) -> None:
    upstream = FakeUpstream().add("www.example.test. 300 IN A 203.0.113.1").start()
    fakes.append(upstream)
    port = free_port()
    proc = SplitDNS(
        tmp_path,
        f'upstreams: ["{upstream.address}"]\nmetrics: "127.0.0.1:{port}"\n'
        "views:\n  - name: lan\n    clients: [127.0.0.1/32]\n"
        "    rewrite: [{from: 203.0.113.1, to: 192.0.2.2}]\n",
    )
    try:
        for _ in range(2):  # a miss with a rewrite, then a hit
            proc.query("www.example.test")
        exported = {name for name, _ in scrape(port)} | declared(port)
    finally:
        assert proc.stop() == 0, proc.output
    wanted = queried_metrics()
    assert len(wanted) >= 15, wanted
    missing = sorted(wanted - exported)
    assert not missing, missing
