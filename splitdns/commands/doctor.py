"""`splitdns doctor`: checks a live setup and prints one verdict per line.

- each listen address: free to bind, or taken (by whom, with the systemd-resolved fix)
- each upstream: answers a real query, and how fast
- each rewrite rule's public address: still the current one (follow/interface sources, or a
  DDNS name given with --ddns)
- each NAT forward: does this host reach the service through the public address, i.e. does
  the router hairpin at all?
- each rewritten name doctor can name: is its zone DNSSEC-signed (validators downstream of
  splitdns would reject the rewritten answers)?
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

import dns.exception
import dns.message
import dns.rdatatype

from splitdns import wire
from splitdns.commands.health import answers, health_target
from splitdns.commands.loading import CONFIG_ENV, DEFAULT_PATH, choose, load_or_report
from splitdns.config import crosscheck
from splitdns.config.model import Config, Endpoint, parse_endpoint
from splitdns.config.upstreams import UpstreamSpec
from splitdns.listen.ports import RESOLVED_FIX, command_line, is_splitdns, port_owner
from splitdns.serve import follow
from splitdns.serve.server import Server
from splitdns.upstream.forwarder import Forwarder, every_upstream, only
from splitdns.upstream.transport import UpstreamFailure

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True)
class Verdict:
    level: str
    message: str

    def __str__(self) -> str:
        return f"{self.level:4}  {self.message}"


def serves_file(pid: int, path: str) -> bool:
    """Whether the process is a `splitdns serve` of this very file (`-c`, or with none, the
    default every command takes: its $SPLITDNS_CONFIG, else the default path)."""
    argv = command_line(pid)
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        cwd = os.getcwd()
    for flag in ("-c", "--config"):
        if flag in argv[:-1]:
            given = argv[argv.index(flag) + 1]
            return os.path.realpath(os.path.join(cwd, given)) == os.path.realpath(path)
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    named = [
        e.split(b"=", 1)[1].decode() for e in environ if e.startswith(CONFIG_ENV.encode() + b"=")
    ]
    given = (
        named[0] if named and named[0] else (DEFAULT_PATH if os.path.exists(DEFAULT_PATH) else "")
    )
    return bool(given) and os.path.realpath(os.path.join(cwd, given)) == os.path.realpath(path)


def check_listen(endpoint: Endpoint, config_path: str = "") -> Verdict:
    family = socket.AF_INET6 if endpoint.family_v6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((endpoint.host, endpoint.port))
        except PermissionError:
            return Verdict(WARN, f"listen {endpoint}: needs root or CAP_NET_BIND_SERVICE")
        except OSError as exc:
            owner = port_owner(endpoint.port)
            if owner is None:  # (another user's, or another PID namespace's: unseen here)
                if answers(health_target(str(endpoint)), 1.0):
                    return Verdict(
                        OK,
                        f"listen {endpoint}: served by splitdns (it answers splitdns's "
                        "own health probe; the process is not visible from here)",
                    )
                return Verdict(
                    FAIL, f"listen {endpoint}: taken by another process ({exc.strerror})"
                )
            name, pid = owner
            if is_splitdns(pid) and config_path and serves_file(pid, config_path):
                return Verdict(
                    OK, f"listen {endpoint}: served by splitdns (pid {pid}) with this file"
                )
            if is_splitdns(pid):
                return Verdict(
                    WARN, f"listen {endpoint}: taken by splitdns (pid {pid}) with another config"
                )
            hint = f": {RESOLVED_FIX}" if name.startswith("systemd-resolve") else ""
            return Verdict(
                FAIL, f"listen {endpoint}: taken by {name} (pid {pid}) ({exc.strerror}){hint}"
            )
    return Verdict(OK, f"listen {endpoint}: free")


def check_dns64(config: Config) -> list[Verdict]:
    """For each DNS64 view's rule: what an IPv6-only client gets for the rewritten names and
    what the server then sees as the client (crosscheck.dns64_cases)."""
    verdicts = []
    for view in config.views:
        for rule, case, what in crosscheck.dns64_cases(view):
            level = WARN if case == "nodata" else OK
            said = f"dns64 view {view.name}, rewrite[{rule.index}] -> {rule.target}: "
            verdicts.append(Verdict(level, f"{said}IPv6-only clients get {what}"))
    return verdicts


def probe_name(config: Config, spec: UpstreamSpec) -> str:
    """A name the upstream should answer: the first domain routed to it, else the root."""
    for domain, specs in config.forwarding.domains:
        if spec in specs and spec not in config.upstreams:
            return domain
    return ""


async def check_upstream(config: Config, spec: UpstreamSpec, timeout: float) -> Verdict:
    name = probe_name(config, spec)
    qtype = wire.TYPE_SOA if name else wire.TYPE_NS
    shown = f"{name or '.'} {'SOA' if name else 'NS'}"
    query = wire.parse_query(wire.make_query(name, qtype))
    began = time.monotonic()
    forwarder = Forwarder(replace(only(config, spec), timeout=timeout))
    try:
        reply = await forwarder.resolve(query)
    except UpstreamFailure as exc:
        if "REFUSED" in str(exc) and "timeout" not in str(exc):
            return Verdict(
                WARN if not name else OK,
                f"upstream {spec}: answers, but REFUSED {shown} (a server for its own domains "
                "only? route only those to it with upstreams.domains)",
            )
        return Verdict(FAIL, f"upstream {spec}: no usable answer to {shown} ({exc})")
    finally:
        await forwarder.aclose()
    elapsed = (time.monotonic() - began) * 1000
    rcode = wire.rcode_name(reply.message.rcode)
    return Verdict(
        OK,
        f"upstream {spec}: answered {shown} ({rcode}) over {reply.transport} in {elapsed:.0f} ms",
    )


async def check_upstream_dns64(config: Config, timeout: float) -> list[Verdict]:
    """Whether the upstreams synthesize AAAA (RFC 7050: ipv4only.arpa): then an AAAA for a
    name on the public address embeds it, and splitdns must make it again for the LAN."""
    if not config.upstreams or not any(v.rules for v in config.views):
        return []
    server = Server(replace(config, timeout=timeout))
    try:
        await server.discover_nat64()
    finally:
        await server.upstreams.aclose()
    if not server.nat64_prefixes:
        return [Verdict(OK, "upstreams: no DNS64 (ipv4only.arpa has no AAAA)")]
    shown = ", ".join(map(str, server.nat64_prefixes))
    rewriting = [v.name for v in config.views if v.rules and v.dns64 is None]
    return [
        Verdict(
            WARN,
            f"upstreams do DNS64 (prefix {shown}): their AAAA for a name on the public address "
            f"embeds it; splitdns makes it again from the internal address in view(s) "
            f"{', '.join(rewriting) or '-'} (removed under the well-known prefix); IPv6-only "
            "clients need dns64: in their view",
        )
    ]


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


def rewritten_names(config: Config, ddns: str | None) -> dict[str, str]:
    """Names splitdns rewrites that doctor can name: each rule's `names` (a wildcard's suffix
    stands for its zone), followed DDNS names and --ddns, with where each comes from."""
    names: dict[str, str] = {}
    for view in config.views:
        for rule in view.rules:
            where = f"views.{view.name}.rewrite[{rule.index}]"
            for pattern in rule.names:
                names.setdefault(pattern.suffix, where)
            if rule.follow:
                names.setdefault(rule.follow, where)
    if ddns:
        names.setdefault(ddns, "--ddns")
    return names


async def check_signed(config: Config, ddns: str | None, timeout: float) -> list[Verdict]:
    """Rewritten names in DNSSEC-signed zones: their answers lose the signatures, so a
    validating resolver downstream of splitdns turns them into SERVFAIL."""
    out: list[Verdict] = []
    forwarder = Forwarder(replace(config, timeout=timeout))
    try:
        for name, where in rewritten_names(config, ddns).items():
            asked = dns.message.make_query(name, "A", want_dnssec=True)
            query = wire.parse_query(asked.to_wire())
            try:
                reply = await forwarder.resolve(query)
            except UpstreamFailure:
                continue  # the upstream check above already says so
            signers = sorted(
                {
                    rdata.signer.to_text(omit_final_dot=True)
                    for rrset in dns.message.from_wire(reply.data).answer
                    if rrset.rdtype == dns.rdatatype.RRSIG
                    for rdata in rrset
                }
            )
            if signers:
                zones = ", ".join(signers)
                out.append(
                    Verdict(
                        WARN,
                        f"{where}: {name} is in the DNSSEC-signed zone {zones}: splitdns removes "
                        "the signatures of its rewritten answers, so a validating resolver "
                        "downstream of splitdns answers SERVFAIL for it. Validate upstream of "
                        "splitdns instead, or mark it insecure there (unbound: "
                        f'domain-insecure: "{signers[0]}")',
                    )
                )
    finally:
        await forwarder.aclose()
    return out


def _ask(server: Endpoint, name: str, timeout: float) -> tuple[str, ...] | str:
    """The sorted A/AAAA answers a server gives this host for `name`, or what went wrong."""
    family = socket.AF_INET6 if server.family_v6 else socket.AF_INET
    query = wire.make_query(name, wire.TYPE_A)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((server.host, server.port))
            sock.send(query)
            reply = dns.message.from_wire(sock.recv(65535))
        except (OSError, dns.exception.DNSException) as exc:
            return f"no answer ({exc or type(exc).__name__})"
    if reply.rcode() != 0:
        return wire.rcode_name(reply.rcode())
    return tuple(sorted(r.to_text() for rrset in reply.answer if rrset.rdtype == 1 for r in rrset))


async def check_peer(config: Config, peer: str, ddns: str | None, timeout: float) -> list[Verdict]:
    """Two resolvers for one LAN must say the same: ask both, as this host, for each name the
    rules name (run doctor on a LAN host, so both put it in the same view)."""
    try:
        other = parse_endpoint(peer, 53)
    except ValueError as exc:
        return [Verdict(FAIL, f"peer {peer}: {exc}")]
    if not config.listen:
        return [Verdict(FAIL, "peer: this config has no plain listen address to compare")]
    mine = config.listen[0]
    if mine.host in ("0.0.0.0", "::"):
        mine = Endpoint("127.0.0.1" if mine.host == "0.0.0.0" else "::1", mine.port)
    names = sorted(rewritten_names(config, ddns))
    if not names:
        return [
            Verdict(WARN, f"peer {other}: no rule names a host to compare (use names: or --ddns)")
        ]
    out = []
    for name in names:
        here = await asyncio.to_thread(_ask, mine, name, timeout)
        there = await asyncio.to_thread(_ask, other, name, timeout)
        if here == there:
            out.append(Verdict(OK, f"peer {other}: {name} -> {_shown(here)} on both"))
        else:
            out.append(
                Verdict(
                    FAIL,
                    f"peer {other}: {name} -> {_shown(here)} here ({mine}) but {_shown(there)} "
                    "there: the two resolvers disagree (same mapping on both? reloaded?)",
                )
            )
    return out


def _shown(answer: tuple[str, ...] | str) -> str:
    if isinstance(answer, str):
        return answer
    return ", ".join(answer) or "NODATA"


async def diagnose(
    config: Config, ddns: str | None = None, timeout: float = 2.0, peer: str | None = None
) -> list[Verdict]:
    verdicts = [check_listen(e, config.source) for e in config.listen]
    upstreams = every_upstream(config)
    verdicts += await asyncio.gather(*(check_upstream(config, s, timeout) for s in upstreams))
    if not upstreams:
        verdicts.append(Verdict(FAIL, "upstreams: none configured"))
    verdicts += await check_public(config, ddns)
    verdicts += await check_hairpin(config, timeout)
    verdicts += await check_signed(config, ddns, timeout)
    verdicts += check_dns64(config)
    verdicts += await check_upstream_dns64(config, timeout)
    if peer:
        verdicts += await check_peer(config, peer, ddns, timeout)
    return verdicts


def command(args: argparse.Namespace) -> int:
    choice = choose(args.config)
    config = load_or_report(choice.path)
    if config is None:
        return 1
    print(Verdict(OK, choice.describe()))
    verdicts = asyncio.run(diagnose(config, args.ddns, args.timeout, args.peer))
    for verdict in verdicts:
        print(verdict)
    return 1 if any(v.level == FAIL for v in verdicts) else 0
