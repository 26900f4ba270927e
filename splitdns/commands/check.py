"""`splitdns check`: validate a zone mapping and print what splitdns understood of it."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from splitdns.commands.loading import choose, load_or_report
from splitdns.config import crosscheck
from splitdns.config.model import Config
from splitdns.limits import budgets
from splitdns.listen import certs
from splitdns.listen.privileges import service_user


def command(args: argparse.Namespace) -> int:
    choice = choose(args.config)
    config = load_or_report(choice.path)
    if config is None:
        return 1
    problem = certificate_problem(config)
    if problem is not None:
        print(f"{config.source}: tls: {problem}", file=sys.stderr)
        return 1
    print(f"{config.source}: OK")
    if choice.origin != "-c":
        print(choice.describe())
    for line in summary(config):
        print(line)
    for warning in crosscheck.cross_check(config):
        print(f"warning: {warning}")
    return 0


def certificate_problem(config: Config) -> str | None:
    """A missing, unreadable or mismatched certificate/key pair, in words (None if fine or
    not needed; a self-signed pair not made yet is fine: serve makes it)."""
    if not config.encrypted:
        return None
    files = certs.files_for(config)

    def look() -> None:
        if files.self_signed and not files.cert.exists():
            return
        certs.check(files)

    try:
        as_reader(config, look)
    except certs.CertificateError as exc:
        return str(exc)
    except OSError as exc:
        return f"{exc.filename or files.cert}: {exc.strerror or exc} (as uid {os.geteuid()})"
    return None


T = TypeVar("T")


def as_reader(config: Config, read: Callable[[], T]) -> T:
    """`read()` as this user, and where that may not (root without DAC_OVERRIDE in the image,
    whose state directory is the service user's), again as the user serve becomes."""
    try:
        return read()
    except (PermissionError, certs.CertificateError) as exc:
        if isinstance(exc, certs.CertificateError) and "not readable" not in str(exc):
            raise
        with certs.acting_as(service_user(config.user)) as switched:
            if not switched:
                raise
            return read()


def tls_lines(config: Config) -> list[str]:
    """The encrypted listeners and the certificate, read as the user `serve` becomes: in the
    image the state directory is that user's, and root there has no DAC_OVERRIDE."""
    if not config.encrypted:
        return []
    lines = [f"encrypted: {', '.join(map(str, config.encrypted))}"]
    files = certs.files_for(config)

    def look() -> tuple[bool, str]:
        made = not files.self_signed or files.cert.exists()
        return made, certs.pin(files) if made else ""

    try:
        made_yet, pin = as_reader(config, look)
    except OSError as exc:
        made_yet, pin = True, f"unreadable here ({exc.strerror or exc})"
    if not made_yet:
        lines.append(f"certificate: self-signed, made at first start in {files.cert}")
    else:
        made = "self-signed " if files.self_signed else ""
        lines.append(f"certificate: {made}{files.cert} (key {files.key})")
        lines.append(f"pin-sha256: {pin}  (kdig +tls-pin=..., Android/iOS pinning)")
    if config.resolver_name:
        lines.append(f"resolver name: {config.resolver_name} (DDR: _dns.{config.resolver_name})")
    return lines


def summary(config: Config) -> list[str]:
    """What `check` prints: the config as splitdns understood it."""
    lines = [
        f"listen: {', '.join(map(str, config.listen))}",
        f"upstreams ({config.upstreams_origin}): "
        + (", ".join(map(str, config.upstreams)) or "none (every query will get SERVFAIL)"),
        f"allow: {', '.join(map(str, config.allow))}",
        f"timeout: {config.timeout:g} s",
        *tls_lines(config),
        *limit_lines(config),
        *operator_lines(config),
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
            f"nat: public {public_text(config)}, wan {config.nat.wan_interface}, "
            f"lan {config.nat.lan_interface} ({', '.join(map(str, config.nat.lan))}), "
            f"{len(config.nat.forwards)} forward(s)"
        )
        lines += [f"  {fwd.describe()}" for fwd in config.nat.forwards]
        lines += intercept_lines(config)
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


def intercept_lines(config: Config) -> list[str]:
    """What `nat.intercept_dns` makes the router do, rule by rule, and what it costs."""
    nat = config.nat
    intercept = nat.intercept if nat is not None else None
    if nat is None or intercept is None:
        return []
    server = intercept.server
    lines = [
        f"  intercept_dns: DNS (udp and tcp 53) arriving on {nat.lan_interface} for anyone but "
        f"{server} (and not from it: its own upstream queries) is sent to {server}",
    ]
    if intercept.on_router:
        lines.append("    splitdns runs on the router: DNAT alone; redirected devices keep "
                     "their own addresses and views")  # fmt: skip
    else:
        view = next((v for v in config.views if any(intercept.router in c for c in v.clients)),
                    None) if intercept.router is not None else None  # fmt: skip
        lines.append(
            f"    the router masquerades what it redirected (else {server} would answer the "
            f"device directly and be dropped): splitdns sees those devices as {intercept.router} "
            f"and they share its view ({view.name if view else 'none'}); devices that use "
            "splitdns as told keep their own addresses and views"
        )
    if intercept.block_dot:
        lines.append(
            f"    DNS over TLS and QUIC (853) to anyone but {server}: refused (Android's "
            "automatic Private DNS falls back to splitdns; strict mode with a public provider "
            "fails visibly); DNS over HTTPS to a public provider is HTTPS and cannot be told "
            "apart here (the DoH canary stops Firefox's)"
        )
    return lines


def operator_lines(config: Config) -> list[str]:
    """Where the dashboard and /metrics are served, and who may open the dashboard."""
    lines = []
    board = config.dashboard
    if board is None:
        lines.append("dashboard: off (dashboard: {listen: 127.0.0.1:5380} turns it on)")
    else:
        who = (
            f"password from {board.password_file}"
            if board.password_file
            else "no password: loopback, this machine only"
        )
        lines.append(f"dashboard: {board} ({who}); /metrics and /healthz there too")
    if config.metrics is not None and (
        board is None or (board.host, board.port) != (config.metrics.host, config.metrics.port)
    ):
        lines.append(f"metrics: http://{config.metrics}/metrics (and /healthz)")
    return lines


def limit_lines(config: Config) -> list[str]:
    """The budgets `serve` would put in force here (with this machine's descriptor limit,
    raised to the hard one as serve raises it), and the deadlines."""
    limits = config.limits
    nofile = budgets.hard_nofile() if limits.raise_nofile else budgets.current_nofile()
    sized = budgets.size(limits, nofile)
    return [
        f"limits: {sized.describe()}",
        f"deadlines: TLS handshake {limits.handshake_timeout:g} s, DoH request "
        f"{limits.request_timeout:g} s, idle {config.tcp_idle_timeout:g} s, connection age "
        f"{limits.connection_max_age:g} s; {limits.streams_per_connection} queries per "
        f"connection, {limits.buffered_per_connection} unfinished bytes per DoH connection",
    ]


def public_text(config: Config) -> str:
    nat = config.nat
    if nat is None:
        return "-"
    if nat.public_follow:
        return f"{{follow: {nat.public_follow}}}"
    if nat.public_interface:
        return f"{{interface: {nat.public_interface}}}"
    return str(nat.public)
