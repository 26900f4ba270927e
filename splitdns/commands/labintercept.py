"""`splitdns lab --intercept`: devices that bring their own resolver, caught by the router.

The hairpin lab's network (splitdns.commands.lab), with the outside's authoritative server at
198.51.100.53 playing the public resolver a smart TV has built in (8.8.8.8 in real life), and
a DNS over TLS listener beside it. splitdns runs on the LAN server (192.0.2.2) or on the
router (192.0.2.1); the router loads the rules `splitdns nat` renders from `intercept_dns:`.
The story: without the rules the device gets the public address; with them it gets the
internal one, connects to the server directly (which sees the device's own address), its
DoT is refused, and splitdns's own upstream queries still flow.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from splitdns.commands.lab import (
    AUTH_DNS,
    CLIENT,
    LAN_NET,
    OUTSIDE,
    PEER_SERVER,
    PUBLIC,
    ROUTER_LAN,
    ROUTER_OUT,
    SERVER,
    Lab,
    LabError,
    Step,
    run_story,
    start_outside_dns,
    wait_until,
)

WEB = 80
DOT = 853


def intercept_config(lab: Lab, on_router: bool) -> str:
    """The mapping the lab's splitdns runs and the router's rules are rendered from."""
    where = ROUTER_LAN if on_router else SERVER
    placement = "on_router: true" if on_router else f"router: {ROUTER_LAN}"
    return (
        "\n".join(
            [
                f'listen: ["{where}:53"]',
                f'upstreams: ["{AUTH_DNS}"]',
                f"allow: [{LAN_NET}]",
                "views:",
                "  - name: lan",
                f"    clients: [{LAN_NET}]",
                f"    rewrite: [{{from: {PUBLIC}, to: {SERVER}}}]",
                "nat:",
                f"  public: {PUBLIC}",
                f"  wan_interface: {lab.wan_interface}",
                f"  lan_interface: {lab.lan_interface}",
                f"  lan: [{LAN_NET}]",
                f"  forwards: [{{proto: tcp, port: {WEB}, to: {SERVER}}}]",
                f"  intercept_dns: {{server: {where}, {placement}}}",
                f'query_log: {{path: "/tmp/{lab.ns("intercept")}/queries.log"}}',
            ]
        )
        + "\n"
    )


def story(
    lab: Lab, kind: str, on_router: bool, say: Callable[[Step], None] = lambda step: None
) -> list[Step]:
    """The steps, each told through `say` as it happens."""
    from splitdns import nat
    from splitdns.config import crosscheck
    from splitdns.config import model as configmod

    steps: list[Step] = []

    def record(title: str, observed: str, ok: bool, breaks: bool = False) -> None:
        steps.append(Step(title, observed, ok, breaks))
        say(steps[-1])

    text = intercept_config(lab, on_router)
    cfg = configmod.loads(text, "lab-intercept.yaml")
    assert cfg.nat is not None
    rules = nat.render(cfg.nat, kind, "needed", crosscheck.rewrite_targets(cfg), "lab.yaml")
    where, role = (ROUTER_LAN, "router") if on_router else (SERVER, "server")
    workdir = Path(f"/tmp/{lab.ns('intercept')}")
    workdir.mkdir(exist_ok=True)
    (workdir / "splitdns.yaml").write_text(text)
    try:
        start_outside_dns(lab, workdir)
        lab.spawn("outside", sys.executable, "-c", PEER_SERVER, str(DOT))  # a DoT port
        lab.start_peer_server(WEB)
        lab.spawn(role, sys.executable, "-m", "splitdns", "serve", "-c",
                  str(workdir / "splitdns.yaml"))  # fmt: skip

        def dig(ns: str, server: str, name: str = "www.example.test") -> str:
            return lab.exec(ns, "dig", "+short", "+time=1", "+tries=1", f"@{server}", name,
                            check=False).strip()  # fmt: skip

        if not wait_until(lambda: dig("outside", AUTH_DNS) == PUBLIC, 15):
            raise LabError("the outside's DNS server did not start")
        if not wait_until(lambda: dig("client", where) in (SERVER, PUBLIC), 15):
            raise LabError(f"splitdns did not start on {where}")
        lab.load_rules(_without_intercept(cfg, kind), kind)
        answer = dig("client", AUTH_DNS)
        record(
            f"I1. a device with its own resolver asks {AUTH_DNS} directly, no intercept rules: "
            "the public address (it would hairpin)",
            answer,
            answer == PUBLIC,
            breaks=True,
        )
        seen = lab.dial("client", AUTH_DNS, DOT)
        record(f"I2. its DoT to {AUTH_DNS}:{DOT} goes out, no intercept rules", seen,
               seen in (PUBLIC, ROUTER_OUT))  # fmt: skip
        lab.load_rules(rules, kind)
        answer = dig("client", AUTH_DNS)
        record(
            f"I3. with `splitdns nat` ({kind}, splitdns on the "
            f"{'router' if on_router else 'LAN server'}): the same question is answered by "
            "splitdns",
            answer,
            answer == SERVER,
        )
        asked_by = _last_client(workdir / "queries.log")
        expected = CLIENT if on_router else ROUTER_LAN
        record(
            "I3b. splitdns sees the device as "
            + ("itself (DNAT alone)" if on_router else "the router (the masquerade), whose view "
               "it gets"),
            asked_by,
            asked_by == expected,
        )  # fmt: skip
        tcp = lab.exec("client", "dig", "+short", "+tcp", "+time=2", "+tries=1",
                       f"@{AUTH_DNS}", "www.example.test", check=False).strip()  # fmt: skip
        record("I4. over TCP too", tcp, tcp == SERVER)
        seen = lab.dial("client", answer, WEB)
        record(f"I5. the device connects to {answer}:{WEB} directly; the server sees", seen,
               seen == CLIENT)  # fmt: skip
        seen = lab.dial("client", AUTH_DNS, DOT)
        record(f"I6. its DoT to {AUTH_DNS}:{DOT} is refused", seen,
               seen.startswith("no connection") and "refused" in seen.lower())  # fmt: skip
        own = dig(role, AUTH_DNS)
        record(
            f"I7. splitdns's own upstream queries (from {where}) still reach {AUTH_DNS}",
            own,
            own == PUBLIC,
        )
        fresh = dig("client", where, "ns.example.test")
        record("I8. a device asking splitdns as told is answered as before", fresh,
               fresh == AUTH_DNS)  # fmt: skip
        outside = dig("outside", AUTH_DNS)
        record("I9. outside clients still get the public address", outside, outside == PUBLIC)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return steps


def _last_client(log: Path) -> str:
    """The client of the last query in splitdns's query log (JSON lines)."""
    import json

    try:
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        return str(json.loads(lines[-1])["client"]) if lines else "no query logged"
    except (OSError, ValueError, KeyError) as exc:
        return f"no query log ({exc})"


def _without_intercept(cfg: object, kind: str) -> str:
    """The same forwards' rules with no intercept_dns (the "before")."""
    from dataclasses import replace

    from splitdns import nat
    from splitdns.config import crosscheck
    from splitdns.config import model as configmod

    assert isinstance(cfg, configmod.Config) and cfg.nat is not None
    plain = replace(cfg.nat, intercept=None)
    return nat.render(plain, kind, "needed", crosscheck.rewrite_targets(cfg), "lab.yaml")


def command(kind: str) -> int:
    """`splitdns lab --intercept`: both placements, one verdict a line."""
    print(f"lab: outside {OUTSIDE}, its DNS {AUTH_DNS} | router {PUBLIC} / {ROUTER_LAN} | "
          f"server {SERVER} | client {CLIENT} | rules: {kind}")  # fmt: skip
    codes = []
    for on_router in (False, True):
        print(f"lab: splitdns on the {'router' if on_router else 'LAN server'}")
        codes.append(
            run_story(Lab, lambda net, say, r=on_router: story(net, kind, r, say))  # type: ignore[misc]
        )
    return max(codes)
