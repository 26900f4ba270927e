"""The command line: flags become config overrides; this is the only module that exits."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from splitdns import __version__
from splitdns import config as configmod
from splitdns.config import Config, ConfigError
from splitdns.loops import LOOP_FACTORIES, loop_factory, loop_name
from splitdns.privileges import PrivilegeError, drop_root
from splitdns.server import Server

log = logging.getLogger("splitdns")


def _parser() -> argparse.ArgumentParser:
    version = f"splitdns {__version__}"
    parser = argparse.ArgumentParser(
        prog="splitdns",
        description="A LAN DNS forwarder that rewrites public answers into internal addresses.",
    )
    parser.add_argument("--version", action="version", version=version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the DNS server until SIGINT/SIGTERM")
    serve.add_argument("--version", action="version", version=version)
    serve.add_argument("-c", "--config", metavar="FILE", help="zone mapping (default: embedded)")
    serve.add_argument(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help=f"listen here instead (repeatable; default: ${LISTEN_ENV}, comma-separated, if set)",
    )
    serve.add_argument(
        "--upstream",
        action="append",
        metavar="HOST[:PORT]",
        help="forward here instead (repeatable)",
    )
    serve.add_argument(
        "--workers", type=int, metavar="N", help="processes sharing the port (SO_REUSEPORT)"
    )
    serve.add_argument("--loop", choices=sorted(LOOP_FACTORIES), default="auto", help="event loop")
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level",
    )

    check = sub.add_parser("check", help="validate a zone mapping and summarise it")
    check.add_argument("--version", action="version", version=version)
    check.add_argument("-c", "--config", metavar="FILE", required=True, help="zone mapping")

    nat = sub.add_parser("nat", help="print router NAT rules (forwards + hairpin) for the mapping")
    nat.add_argument("--version", action="version", version=version)
    nat.add_argument("-c", "--config", metavar="FILE", required=True, help="zone mapping")
    nat.add_argument("--target", required=True, choices=sorted(nat_targets()), help="rule syntax")
    nat.add_argument(
        "--hairpin",
        default="needed",
        choices=["needed", "all", "none"],
        help="hairpin masquerade: only where DNS cannot help (default), for every forward, or none",
    )

    explain = sub.add_parser("explain", help="show, step by step, how a question is answered")
    explain.add_argument("--version", action="version", version=version)
    explain.add_argument("name", help="the name to look up")
    explain.add_argument("-c", "--config", metavar="FILE", help="zone mapping (default: embedded)")
    explain.add_argument("--client", default="127.0.0.1", metavar="IP", help="who asks")
    explain.add_argument("--type", default="A", dest="qtype", metavar="TYPE", help="query type")
    explain.add_argument("--upstream", action="append", metavar="HOST[:PORT]", help="override")

    doctor = sub.add_parser("doctor", help="check a live setup, one verdict per line")
    doctor.add_argument("--version", action="version", version=version)
    doctor.add_argument("-c", "--config", metavar="FILE", required=True, help="zone mapping")
    doctor.add_argument("--ddns", metavar="NAME", help="the DDNS name of the public address")
    doctor.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS")

    health = sub.add_parser("health", help="ask a running server; exit 0 if it answers, else 1")
    health.add_argument("--version", action="version", version=version)
    health.add_argument(
        "--server",
        metavar="HOST:PORT",
        help=f"default: the first ${LISTEN_ENV} address (a wildcard asks loopback), else "
        "127.0.0.1:5353",
    )
    health.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS")

    lab = sub.add_parser("lab", help="build a namespace lab and run the hairpin story live (root)")
    lab.add_argument("--version", action="version", version=version)
    lab.add_argument(
        "-c", "--config", metavar="FILE", help="take the TCP forwards' ports from this file's nat:"
    )
    lab.add_argument(
        "--rules", choices=["nftables", "iptables"], default="nftables", help="router rules"
    )
    return parser


#: Listen addresses from the environment (containers, compose): `serve` and `health` agree.
LISTEN_ENV = "SPLITDNS_LISTEN"


def health_target(listen: str | None) -> str:
    """Where `health` asks: the first listen address, with a wildcard replaced by loopback."""
    first = (listen or "").split(",")[0].strip()
    if not first:
        return "127.0.0.1:5353"
    if first.startswith("0.0.0.0:"):
        return "127.0.0.1:" + first.split(":", 1)[1]
    if first.startswith("[::]:"):
        return "[::1]:" + first.rsplit(":", 1)[1]
    return first


def nat_targets() -> list[str]:
    from splitdns.nat import TARGETS

    return list(TARGETS)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        return _check(args.config)
    if args.command == "nat":
        return _nat(args.config, args.target, args.hairpin)
    if args.command == "explain":
        return _explain(args)
    if args.command == "doctor":
        return _doctor(args.config, args.ddns, args.timeout)
    if args.command == "health":
        return _health(args.server or health_target(os.environ.get(LISTEN_ENV)), args.timeout)
    if args.command == "lab":
        return _lab(args.config, args.rules)
    return _serve(args)


# --------------------------------------------------------------------------- check


def summary(config: Config) -> list[str]:
    """What `check` prints: the config as splitdns understood it."""
    lines = [
        f"listen: {', '.join(map(str, config.listen))}",
        f"upstreams ({config.upstreams_origin}): "
        + (", ".join(map(str, config.upstreams)) or "none (every query will get SERVFAIL)"),
        f"allow: {', '.join(map(str, config.allow))}",
        f"timeout: {config.timeout:g} s",
    ]
    fwd = config.forwarding
    for domain, specs in fwd.domains:
        lines.append(f"upstreams for {domain}: {', '.join(map(str, specs))}")
    if fwd.domains or fwd.strategy != "failover":
        lines.append(f"upstream strategy: {fwd.strategy}")
    lines.append(
        "private reverse zones (RFC 6303): "
        + ("answered locally" if fwd.local_reverse else "forwarded")
    )
    if fwd.case_randomization:
        lines.append("case randomization (0x20) on plain upstreams: on")
    if config.rebinding.enabled:
        allowed = ", ".join(config.rebinding.allow) or "none beyond routed and owned names"
        lines.append(f"rebinding guard: on (allowed domains: {allowed})")
    if not config.views:
        lines.append("views: none (allowed clients get plain forwarding)")
    if config.nat is not None:
        lines.append(
            f"nat: public {_public_text(config)}, wan {config.nat.wan_interface}, "
            f"lan {config.nat.lan_interface} ({', '.join(map(str, config.nat.lan))}), "
            f"{len(config.nat.forwards)} forward(s)"
        )
        lines += [f"  {fwd.describe()}" for fwd in config.nat.forwards]
    for view in config.views:
        lines.append(
            f"view {view.name}: clients {', '.join(map(str, view.clients))}; "
            f"{len(view.rules)} rewrite rule(s); {len(view.hosts)} host(s); aaaa {view.aaaa}"
        )
        for rule in view.rules:
            lines.append(f"  rewrite[{rule.index}] {rule}")
        for name, addresses in view.hosts.exact.items():
            lines.append(f"  host {name} -> {', '.join(map(str, addresses))}")
        for pattern, addresses in view.hosts.wildcards:
            lines.append(f"  host {pattern} -> {', '.join(map(str, addresses))}")
    return lines


def _public_text(config: Config) -> str:
    nat = config.nat
    if nat is None:
        return "-"
    if nat.public_follow:
        return f"{{follow: {nat.public_follow}}}"
    if nat.public_interface:
        return f"{{interface: {nat.public_interface}}}"
    return str(nat.public)


def _check(path: str) -> int:
    try:
        config = configmod.load(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{path}: OK")
    for line in summary(config):
        print(line)
    for warning in configmod.cross_check(config):
        print(f"warning: {warning}")
    return 0


def _nat(path: str, target: str, hairpin: str) -> int:
    from splitdns import nat

    try:
        config = configmod.load(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if config.nat is None:
        print(f"{path}: no 'nat:' section to render", file=sys.stderr)
        return 1
    from splitdns.follow import resolved_nat
    from splitdns.upstream import UpstreamFailure

    try:
        settings = asyncio.run(resolved_nat(config))
    except (ValueError, UpstreamFailure) as exc:
        print(f"{path}: nat.public {_public_text(config)}: {exc}", file=sys.stderr)
        return 1
    assert settings is not None
    if settings.dynamic:
        print(f"# nat.public {_public_text(config)} is {settings.public} now")
    sys.stdout.write(nat.render(settings, target, hairpin, configmod.rewrite_targets(config), path))
    return 0


def _load_config(path: str | None, listen: list[str] | None, upstreams: list[str] | None) -> Config:
    """The file (or the embedded default) with command-line overrides applied on top."""
    config = configmod.load(path) if path else configmod.load_default()
    return config.with_overrides(listen, upstreams)


def _explain(args: argparse.Namespace) -> int:
    from splitdns.explain import explain

    try:
        config = _load_config(args.config, None, args.upstream)
        lines = asyncio.run(explain(config, args.name, args.client, args.qtype))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"splitdns explain: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


def _doctor(path: str, ddns: str | None, timeout: float) -> int:
    from splitdns.doctor import FAIL, diagnose

    try:
        config = configmod.load(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    verdicts = asyncio.run(diagnose(config, ddns, timeout))
    for verdict in verdicts:
        print(verdict)
    return 1 if any(v.level == FAIL for v in verdicts) else 0


def _health(server: str, timeout: float) -> int:
    """A real DNS query to a running server (the container HEALTHCHECK uses this)."""
    import socket

    from splitdns import wire

    try:
        endpoint = configmod.parse_endpoint(server, 53)
    except ValueError as exc:
        print(f"splitdns health: {exc}", file=sys.stderr)
        return 2
    family = socket.AF_INET6 if endpoint.family_v6 else socket.AF_INET
    msg_id, probe = wire.make_probe()
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((endpoint.host, endpoint.port))
            sock.send(probe)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if wire.is_answer_to(sock.recv(4096), msg_id):
                    print(f"healthy: {endpoint} answered")
                    return 0
        except OSError as exc:
            print(f"unhealthy: {endpoint}: {exc or 'no answer'}")
            return 1
    print(f"unhealthy: {endpoint}: no answer within {timeout:g} s")
    return 1


def _lab(path: str | None, rules: str) -> int:
    from splitdns import lab

    forwards: tuple[lab.LabForward, ...] = lab.DEFAULT_FORWARDS
    if path:
        try:
            config = configmod.load(path)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 1
        if config.nat is not None:
            tcp = [f for f in config.nat.forwards if f.proto == "tcp" and f.ports.single]
            if tcp and any(f.ports == f.target_ports for f in tcp):
                forwards = tuple(lab.LabForward(f.ports.low, f.target_ports.low) for f in tcp)
        print(f"lab: TCP forwards from {path}, every target played by the lab's server")
    print(
        f"lab: outside {lab.OUTSIDE} | router {lab.PUBLIC} / {lab.ROUTER_LAN} | "
        f"server {lab.SERVER} | client {lab.CLIENT} | rules: {rules}"
    )

    def say(step: lab.Step) -> None:
        print(f"{'PASS' if step.ok else 'FAIL'}  {step.title}: {step.observed}", flush=True)

    try:
        with lab.Lab() as net:
            steps = lab.story(net, rules, forwards, say)
    except lab.LabError as exc:
        print(f"splitdns lab: {exc}", file=sys.stderr)
        return 1
    print("lab: torn down")
    return 0 if all(s.ok for s in steps) else 1


# --------------------------------------------------------------------------- serve


def startup_line(config: Config, server: Server, loop: str, user: str | None) -> str:
    listening = ", ".join(f"{ep} ({kind})" for kind, ep in server.bound)
    ups = ", ".join(map(str, config.upstreams)) or "NONE (every query gets SERVFAIL)"
    if config.forwarding.domains:
        ups += f" + {len(config.forwarding.domains)} domain routes"
    if config.source == configmod.EMBEDDED_SOURCE:
        what = "embedded default config: no rewrites until configured (splitdns serve -c FILE)"
    else:
        views = ", ".join(f"{v.name} ({len(v.rules)} rules)" for v in config.views) or "none"
        what = f"config {config.source}: views {views}"
    who = f"; running as {user}" if user else ""
    return (
        f"splitdns {__version__} serving {listening}; upstreams {ups} (from "
        f"{config.upstreams_origin}); {what}; loop {loop}{who}"
    )


def _serve(args: argparse.Namespace) -> int:
    if args.listen is None and os.environ.get(LISTEN_ENV):
        args.listen = [a.strip() for a in os.environ[LISTEN_ENV].split(",") if a.strip()]
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = _load_config(args.config, args.listen, args.upstream)
        if args.workers is not None:
            if not 1 <= args.workers <= 64:
                raise ValueError(f"--workers {args.workers}: must be 1-64")
            config = replace(config, workers=args.workers)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"splitdns: bad command-line value: {exc}", file=sys.stderr)
        return 2
    try:
        factory = loop_factory(args.loop)
    except ImportError:
        print(f"splitdns: --loop {args.loop} is not installed", file=sys.stderr)
        return 2

    def reload() -> Config:
        fresh = _load_config(args.config, args.listen, args.upstream)
        return replace(fresh, workers=config.workers)

    if config.workers > 1:
        return _supervise(config, factory, reload)
    return _run_worker(config, factory, reload)


def _run_worker(
    config: Config, factory: Callable[[], asyncio.AbstractEventLoop], reload: Callable[[], Config]
) -> int:
    with asyncio.Runner(loop_factory=factory) as runner:
        try:
            return runner.run(_run(config, loop_name(factory), reload))
        except (OSError, PrivilegeError) as exc:
            print(f"splitdns: {exc}", file=sys.stderr)
            return 1


def _supervise(
    config: Config, factory: Callable[[], asyncio.AbstractEventLoop], reload: Callable[[], Config]
) -> int:
    """Fork `workers` processes that share each port; pass signals on; exit when all have."""
    children: list[int] = []
    for _ in range(config.workers):
        pid = os.fork()
        if pid == 0:
            os._exit(_run_worker(config, factory, reload))
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    worst = 0
    for child in children:
        _, status = os.waitpid(child, 0)
        code = os.waitstatus_to_exitcode(status)
        worst = max(worst, code if code >= 0 else 128 - code)
    return worst


WATCH_INTERVAL = 1.0  # seconds between looks at the config file's mtime and size


def _try_reload(server: Server, reload: Callable[[], Config], why: str) -> None:
    """Load the file again; a bad file is logged with its precise error and changes nothing."""
    try:
        config = reload()
    except (ConfigError, ValueError) as exc:
        server.counts.reloads["rejected"] += 1
        log.error("reload (%s) rejected, still serving the previous config: %s", why, exc)
        return
    server.counts.reloads["ok"] += 1
    notes = server.reload(config)
    log.info("reloaded (%s): %s", why, "; ".join(notes))


async def _watch(server: Server, reload: Callable[[], Config]) -> None:
    """Reload when the config file changes (mtime or size), polled: no inotify needed."""
    path = server.config.source
    if not os.path.exists(path):
        return

    def stamp() -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    seen = stamp()
    while True:
        await asyncio.sleep(WATCH_INTERVAL)
        now = stamp()
        if now is not None and now != seen:
            seen = now
            _try_reload(server, reload, "file changed")


async def _run(config: Config, loop: str, reload: Callable[[], Config]) -> int:
    server = Server(config)
    await server.start()
    try:
        user = drop_root(config.user)
    except PrivilegeError:
        await server.stop(0)
        raise
    if not config.upstreams:
        log.warning("no upstream servers: pass --upstream or set `upstreams:`")
    log.info("%s", startup_line(config, server, loop, user))
    stopping = asyncio.Event()
    running = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        running.add_signal_handler(sig, stopping.set)
    running.add_signal_handler(signal.SIGHUP, _try_reload, server, reload, "SIGHUP")
    watcher = asyncio.ensure_future(_watch(server, reload))
    await stopping.wait()
    watcher.cancel()
    log.info("shutting down: draining in-flight queries")
    await server.stop(drain=min(config.timeout + 0.5, 5.0))
    log.info("stopped")
    return 0
