"""`splitdns health`: one real DNS query to a running server (the container HEALTHCHECK)."""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

from splitdns.commands.loading import LISTEN_ENV, choose, load_or_report
from splitdns.config.model import parse_endpoint
from splitdns.upstream import packets


def health_target(listen: str | None) -> str:
    """Where `health` asks: the first listen address, with a wildcard replaced by loopback."""
    plain = [a.strip() for a in (listen or "").split(",") if "://" not in a]
    first = plain[0] if plain else ""
    if not first:
        return "127.0.0.1:5353"
    if first.startswith("0.0.0.0:"):
        return "127.0.0.1:" + first.split(":", 1)[1]
    if first.startswith("[::]:"):
        return "[::1]:" + first.rsplit(":", 1)[1]
    return first


def command(args: argparse.Namespace) -> int:
    if args.server:
        return probe(args.server, args.timeout)
    choice = choose(args.config)
    config = load_or_report(choice.path) if choice.path else None
    if config is None and args.config:
        return 2  # the file named with -c is broken: said above
    if config is not None and config.listen_given and config.listen:
        server = health_target(str(config.listen[0]))
    else:  # (a broken default file must not fail the healthcheck of a server still serving)
        server = health_target(os.environ.get(LISTEN_ENV))
    return probe(server, args.timeout)


def answers(address: str, timeout: float) -> bool:
    """Whether a splitdns answers its own health probe at `address` (quietly)."""
    try:
        family, where, _ = resolve(address)
    except ValueError:
        return False
    return _unanswered(family, where, timeout) is None


def _unanswered(family: int, address: tuple[str, int], timeout: float) -> str | None:
    """Send the CH-class probe; None when the server answers it, else why not."""
    msg_id, query = packets.make_probe()
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(address)
            sock.send(query)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if packets.is_answer_to(sock.recv(4096), msg_id):
                    return None
        except OSError as exc:
            return str(exc) or "no answer"
    return f"no answer within {timeout:g} s"


def resolve(server: str) -> tuple[int, tuple[str, int], str]:
    """(family, socket address, text) for `HOST:PORT`, `[V6]:PORT`, an address, or a host name
    (looked up with the system resolver: `localhost:5353`); the port defaults to 53."""
    try:
        endpoint = parse_endpoint(server, 53)
    except ValueError:
        host, _, port_text = server.rpartition(":") if ":" in server else (server, "", "53")
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{server!r} is not HOST:PORT") from None
        try:
            found = socket.getaddrinfo(host, int(port_text), type=socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            raise ValueError(f"{host}: {exc.strerror}") from None
        family, _, _, _, address = found[0]
        return family, (str(address[0]), int(address[1])), server
    family = socket.AF_INET6 if endpoint.family_v6 else socket.AF_INET
    return family, (endpoint.host, endpoint.port), str(endpoint)


def probe(server: str, timeout: float) -> int:
    """Ask `server` a CH-class question it answers itself: 0 if it answers, 1 if not."""
    try:
        family, address, shown = resolve(server)
    except ValueError as exc:
        print(f"splitdns health: {exc}", file=sys.stderr)
        return 2
    problem = _unanswered(family, address, timeout)
    if problem is None:
        print(f"healthy: {shown} answered")
        return 0
    print(f"unhealthy: {shown}: {problem}")
    return 1
