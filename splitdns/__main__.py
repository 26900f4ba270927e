"""`python -m splitdns` is the same program as the `splitdns` command."""

from splitdns.cli import main

raise SystemExit(main())
