"""`splitdns nat`: print the router's NAT ruleset from the file's `nat:` section."""

from __future__ import annotations

import argparse
import asyncio
import sys

from splitdns import nat
from splitdns.commands.check import public_text
from splitdns.commands.loading import choose, load_or_report
from splitdns.config import crosscheck
from splitdns.serve.follow import resolved_nat
from splitdns.upstream.transport import UpstreamFailure


def command(args: argparse.Namespace) -> int:
    config = load_or_report(choose(args.config).path)
    if config is None:
        return 1
    path = config.source
    if config.nat is None:
        print(
            f"{path}: no 'nat:' section to render (zones/port-forwards.yaml has one to start "
            "from; docs/nat.md)",
            file=sys.stderr,
        )
        return 1
    try:
        settings = asyncio.run(resolved_nat(config))
    except (ValueError, UpstreamFailure) as exc:
        print(f"{path}: nat.public {public_text(config)}: {exc}", file=sys.stderr)
        return 1
    assert settings is not None
    if settings.dynamic:
        print(f"# nat.public {public_text(config)} is {settings.public} now")
    targets = crosscheck.rewrite_targets(config)
    sys.stdout.write(nat.render(settings, args.target, args.hairpin, targets, path))
    return 0
