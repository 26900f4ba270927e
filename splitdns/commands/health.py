"""`splitdns health`: one real DNS query to a running server (the container HEALTHCHECK)."""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

from splitdns import wire
from splitdns.config.model import parse_endpoint

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


def command(args: argparse.Namespace) -> int:
    server = args.server or health_target(os.environ.get(LISTEN_ENV))
    return probe(server, args.timeout)


def probe(server: str, timeout: float) -> int:
    """Ask `server` a CH-class question it answers itself: 0 if it answers, 1 if not."""
    try:
        endpoint = parse_endpoint(server, 53)
    except ValueError as exc:
        print(f"splitdns health: {exc}", file=sys.stderr)
        return 2
    family = socket.AF_INET6 if endpoint.family_v6 else socket.AF_INET
    msg_id, query = wire.make_probe()
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((endpoint.host, endpoint.port))
            sock.send(query)
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
