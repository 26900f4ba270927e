"""`splitdns passwd FILE`: write the dashboard's password file (a salted scrypt hash).

Asked twice at a terminal; read as one line from standard input otherwise (a script, a
container: `echo "$PW" | splitdns passwd FILE`). The file is written owner-only in one step.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from splitdns.config.passwords import PasswordError, make_hash, write_hash


def command(args: argparse.Namespace) -> int:
    try:
        if sys.stdin.isatty():
            password = getpass.getpass("dashboard password: ")
            if getpass.getpass("again: ") != password:
                print("splitdns passwd: the two differ; nothing written", file=sys.stderr)
                return 1
        else:
            password = sys.stdin.readline().rstrip("\r\n")
        write_hash(args.file, make_hash(password))
    except PasswordError as exc:
        print(f"splitdns passwd: {exc}; nothing written", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"splitdns passwd: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except (EOFError, KeyboardInterrupt):
        print("splitdns passwd: no password given; nothing written", file=sys.stderr)
        return 1
    print(
        f"wrote {args.file} (owner-only). Point the mapping at it:\n"
        f"  dashboard:\n    listen: https://0.0.0.0:5380\n    password_file: {args.file}"
    )
    return 0
