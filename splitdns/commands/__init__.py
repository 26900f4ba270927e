"""One module per `splitdns` command (serve, check, nat, explain, doctor, health, lab), each with
`command(args) -> int`. May import every layer below; only splitdns.cli imports it."""
