"""The command line: parses arguments and hands them to the command's module; the only exit.

Each command lives in splitdns.commands.NAME as `command(args) -> exit status`; its module is
imported only when asked for, so `splitdns health` (a container healthcheck) loads no server.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

from splitdns import __version__
from splitdns.commands.loading import CONFIG_ENV, DEFAULT_PATH, LISTEN_ENV
from splitdns.migrate.sources import FORMATS
from splitdns.nat import TARGETS
from splitdns.serve.loops import LOOP_FACTORIES


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    name = MODULES.get(args.command, args.command)
    if name == "lab" and args.ipv6_mostly:
        name = "lab64"  # the IPv6-mostly story: a lab of its own
    if name == "lab" and args.intercept:
        from splitdns.commands import labintercept  # devices with their own resolver

        return labintercept.command(args.rules)
    module = importlib.import_module(f"splitdns.commands.{name}")
    status: int = module.command(args)
    return status


MODULES = {"import": "importing"}  # commands whose module has another name (a keyword)
CONFIG_HELP = (
    f"zone mapping (default: ${CONFIG_ENV}, else {DEFAULT_PATH} if it exists, else the "
    "embedded default)"
)


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
    serve.add_argument("-c", "--config", metavar="FILE", help=CONFIG_HELP)
    serve.add_argument(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help=f"listen here instead (repeatable; default: the mapping's listen:, else "
        f"${LISTEN_ENV}, comma-separated, if set)",
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
    check.add_argument("-c", "--config", metavar="FILE", help=CONFIG_HELP)

    nat = sub.add_parser("nat", help="print router NAT rules (forwards + hairpin) for the mapping")
    nat.add_argument("--version", action="version", version=version)
    nat.add_argument("-c", "--config", metavar="FILE", help=CONFIG_HELP)
    nat.add_argument("--target", required=True, choices=sorted(TARGETS), help="rule syntax")
    nat.add_argument(
        "--hairpin",
        default="needed",
        choices=["needed", "all", "none"],
        help="hairpin masquerade: only where DNS cannot help (default), for every forward, or none",
    )

    explain = sub.add_parser("explain", help="show, step by step, how a question is answered")
    explain.add_argument("--version", action="version", version=version)
    explain.add_argument("name", help="the name to look up")
    explain.add_argument("-c", "--config", metavar="FILE", help=CONFIG_HELP)
    explain.add_argument("--client", default="127.0.0.1", metavar="IP", help="who asks")
    explain.add_argument("--type", default="A", dest="qtype", metavar="TYPE", help="query type")
    explain.add_argument("--upstream", action="append", metavar="HOST[:PORT]", help="override")

    doctor = sub.add_parser("doctor", help="check a live setup, one verdict per line")
    doctor.add_argument("--version", action="version", version=version)
    doctor.add_argument("-c", "--config", metavar="FILE", help=CONFIG_HELP)
    doctor.add_argument("--ddns", metavar="NAME", help="the DDNS name of the public address")
    doctor.add_argument(
        "--peer", metavar="HOST:PORT", help="a second splitdns for the same LAN: compare answers"
    )
    doctor.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS")

    health = sub.add_parser("health", help="ask a running server; exit 0 if it answers, else 1")
    health.add_argument("--version", action="version", version=version)
    health.add_argument(
        "--server",
        metavar="HOST:PORT",
        help=f"a host name or address (default: the first listen address of the mapping, "
        f"else of ${LISTEN_ENV}; a wildcard asks loopback; else 127.0.0.1:5353)",
    )
    health.add_argument("-c", "--config", metavar="FILE", help=CONFIG_HELP)
    health.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS")

    profile = sub.add_parser(
        "profile", help="print an Apple .mobileconfig that points iOS/macOS at splitdns"
    )
    profile.add_argument("--version", action="version", version=version)
    which = profile.add_mutually_exclusive_group(required=True)
    which.add_argument("--doh", metavar="URL", help="https://NAME/dns-query (DNS over HTTPS)")
    which.add_argument("--dot", metavar="NAME", help="the server name (DNS over TLS, port 853)")
    profile.add_argument(
        "--address", action="append", metavar="IP", help="the server's address (repeatable)"
    )
    profile.add_argument("--name", default="splitdns", help="the name the device shows")

    imp = sub.add_parser(
        "import",
        help="turn another server's local overrides into a zone mapping, and prove it answers "
        "the same",
    )
    imp.add_argument("--version", action="version", version=version)
    imp.add_argument("file", help="AdGuardHome.yaml, pihole.toml, custom.list, dnsmasq.conf, "
                     "unbound.conf, a Technitium Split Horizon config, Corefile, Blocky's "
                     "config.yml or /etc/hosts")  # fmt: skip
    imp.add_argument("--from", dest="source_format", choices=FORMATS,
                     help="the file's format (default: told from its content)")  # fmt: skip
    imp.add_argument("--upstream", action="append", metavar="HOST[:PORT]",
                     help="where to ask public answers (default: resolv.conf's)")  # fmt: skip
    imp.add_argument("-o", "--output", metavar="FILE", help="write the mapping here (else stdout)")
    imp.add_argument("--report", metavar="FILE", help="write the report here")
    imp.add_argument("--lan", action="append", metavar="CIDR",
                     help="the LAN view's clients (default: the private ranges)")  # fmt: skip
    imp.add_argument("--max-size", type=float, default=16, metavar="MB",
                     help="refuse a file larger than this (default: 16)")  # fmt: skip
    imp.add_argument("--offline", action="store_true",
                     help="ask no upstream: every entry becomes a hosts entry")  # fmt: skip
    imp.add_argument("--verify", action="store_true",
                     help="start splitdns on the result; compare every name's answer")  # fmt: skip

    passwd = sub.add_parser(
        "passwd", help="write the dashboard's password file (a salted hash), asked at the terminal"
    )
    passwd.add_argument("--version", action="version", version=version)
    passwd.add_argument("file", help="where to write it (dashboard.password_file)")

    lab = sub.add_parser("lab", help="build a namespace lab and run the hairpin story live (root)")
    lab.add_argument("--version", action="version", version=version)
    lab.add_argument(
        "-c", "--config", metavar="FILE", help="take the TCP forwards' ports from this file's nat:"
    )
    lab.add_argument(
        "--rules", choices=["nftables", "iptables"], default="nftables", help="router rules"
    )
    lab.add_argument(
        "--ipv6-mostly",
        action="store_true",
        help="the IPv6-mostly story instead: an IPv6-only client, a real NAT64 (tayga), DNS64",
    )
    lab.add_argument(
        "--intercept",
        action="store_true",
        help="devices with their own resolver caught by nat.intercept_dns's rules (splitdns "
        "on a LAN host, then on the router)",
    )
    return parser
