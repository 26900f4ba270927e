"""`splitdns doctor`: checks a live setup and prints one verdict per line.

- each listen address: free to bind, or taken (by whom, with the systemd-resolved fix)
- each upstream: answers a real query, and how fast
- each rewrite rule's public address: still the current one (follow/interface sources, or a
  DDNS name given with --ddns)
- each NAT forward: does this host reach the service through the public address, i.e. does
  the router hairpin at all?
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path

from splitdns import wire
from splitdns.commands.loading import load_or_report
from splitdns.config.model import Config, Endpoint
from splitdns.config.upstreams import UpstreamSpec
from splitdns.serve import follow
from splitdns.upstream.forwarder import Forwarder, every_upstream, only
from splitdns.upstream.transport import UpstreamFailure

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True)
class Verdict:
    level: str
    message: str

    def __str__(self) -> str:
        return f"{self.level:4}  {self.message}"


def port_owner(endpoint: Endpoint) -> str | None:
    """The process holding a UDP port, from /proc (None if unknown)."""
    hex_port = f"{endpoint.port:04X}"
    inodes: set[str] = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[1].endswith(":" + hex_port):
                inodes.add(fields[9])
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return f"{Path(f'/proc/{pid}/comm').read_text().strip()} (pid {pid})"
        except OSError:
            continue
    return None


def check_listen(endpoint: Endpoint) -> Verdict:
    family = socket.AF_INET6 if endpoint.family_v6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((endpoint.host, endpoint.port))
        except PermissionError:
            return Verdict(WARN, f"listen {endpoint}: needs root or CAP_NET_BIND_SERVICE")
        except OSError as exc:
            owner = port_owner(endpoint) or "another process"
            hint = ""
            if owner.startswith("systemd-resolve"):
                hint = (
                    ": set DNSStubListener=no in /etc/systemd/resolved.conf and restart "
                    "systemd-resolved (or listen on the LAN address only)"
                )
            return Verdict(FAIL, f"listen {endpoint}: taken by {owner} ({exc.strerror}){hint}")
    return Verdict(OK, f"listen {endpoint}: free")


async def check_upstream(config: Config, spec: UpstreamSpec, timeout: float) -> Verdict:
    query = wire.parse_query(wire.make_query("", wire.TYPE_NS))
    began = time.monotonic()
    forwarder = Forwarder(replace(only(config, spec), timeout=timeout))
    try:
        reply = await forwarder.resolve(query)
    except UpstreamFailure as exc:
        return Verdict(FAIL, f"upstream {spec}: no usable answer ({exc})")
    finally:
        await forwarder.aclose()
    elapsed = (time.monotonic() - began) * 1000
    return Verdict(OK, f"upstream {spec}: answered over {reply.transport} in {elapsed:.0f} ms")


async def check_public(config: Config, ddns: str | None) -> list[Verdict]:
    out: list[Verdict] = []
    ups = Forwarder(config)
    current: ipaddress.IPv4Address | None = None
    if ddns:
        try:
            current, _ = await follow.resolve_a(ups, ddns)
            out.append(Verdict(OK, f"public address: {ddns} is {current}"))
        except (UpstreamFailure, ValueError, wire.WireError) as exc:
            out.append(Verdict(FAIL, f"public address: cannot resolve {ddns} ({exc})"))
    for view in config.views:
        for rule in view.rules:
            where = f"views.{view.name}.rewrite[{rule.index}]"
            try:
                if rule.follow:
                    now, _ = await follow.resolve_a(ups, rule.follow)
                    out.append(Verdict(OK, f"{where}: follows {rule.follow}, now {now}"))
                    continue
                if rule.interface:
                    now = follow.interface_address(rule.interface)
                    out.append(Verdict(OK, f"{where}: follows {rule.interface}, now {now}"))
                    continue
            except (UpstreamFailure, ValueError, wire.WireError) as exc:
                out.append(Verdict(FAIL, f"{where}: its source has no address ({exc})"))
                continue
            if current is not None and rule.source.version == 4:
                if current in rule.source:
                    out.append(Verdict(OK, f"{where}: 'from' {rule.source} holds {current}"))
                else:
                    out.append(
                        Verdict(
                            FAIL,
                            f"{where}: 'from' {rule.source} no longer holds the public address "
                            f"{current}: the rewrite is stale (use from: {{follow: {ddns}}})",
                        )
                    )
    return out


async def check_hairpin(config: Config, timeout: float) -> list[Verdict]:
    try:
        nat = await follow.resolved_nat(config)
    except (ValueError, UpstreamFailure) as exc:
        return [Verdict(FAIL, f"nat.public: no current address ({exc})")]
    if nat is None:
        return []
    out = []
    for fwd in nat.forwards:
        if fwd.proto != "tcp":
            out.append(Verdict(WARN, f"{fwd.describe()}: UDP cannot be probed; skipped"))
            continue
        target = (str(nat.public), fwd.ports.low)
        try:
            async with asyncio.timeout(timeout):
                _, writer = await asyncio.open_connection(*target)
            writer.close()
            out.append(Verdict(OK, f"{fwd.describe()}: reached via {target[0]}:{target[1]}"))
        except (OSError, TimeoutError) as exc:
            reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            out.append(
                Verdict(
                    WARN,
                    f"{fwd.describe()}: not reachable via {target[0]}:{target[1]} ({reason}): the "
                    "router does not hairpin this forward (fine for names splitdns rewrites; "
                    "clients dialling the public address need `splitdns nat` rules)",
                )
            )
    return out


async def diagnose(config: Config, ddns: str | None = None, timeout: float = 2.0) -> list[Verdict]:
    verdicts = [check_listen(e) for e in config.listen]
    upstreams = every_upstream(config)
    verdicts += await asyncio.gather(*(check_upstream(config, s, timeout) for s in upstreams))
    if not upstreams:
        verdicts.append(Verdict(FAIL, "upstreams: none configured"))
    verdicts += await check_public(config, ddns)
    verdicts += await check_hairpin(config, timeout)
    return verdicts


def command(args: argparse.Namespace) -> int:
    config = load_or_report(args.config)
    if config is None:
        return 1
    verdicts = asyncio.run(diagnose(config, args.ddns, args.timeout))
    for verdict in verdicts:
        print(verdict)
    return 1 if any(v.level == FAIL for v in verdicts) else 0
