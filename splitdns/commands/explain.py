"""`splitdns explain`: what splitdns does with one question from one client, step by step
(serve/explaining.py walks it; the dashboard's explain form asks the same)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from splitdns.commands.loading import choose, load_config
from splitdns.config.model import ConfigError
from splitdns.serve.explaining import explain


def command(args: argparse.Namespace) -> int:
    choice = choose(args.config)
    try:
        config = load_config(choice.path, None, args.upstream)
        lines = [choice.describe()]
        lines += asyncio.run(explain(config, args.name, args.client, args.qtype))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"splitdns explain: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0
