"""`splitdns import FILE`: another server's local overrides in, a splitdns mapping out, and
with `--verify`, proof that splitdns answers every imported name as the source did.

The public answers decide the rules (splitdns/migrate/translate.py): each name is asked of the
upstreams (`--upstream`, else /etc/resolv.conf's), A and AAAA. `--verify` starts splitdns on
the result (loopback, a free port, each view's clients joined by one loopback address so it
can be asked from inside every view) and asks every imported name from each view.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import ipaddress
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from splitdns.commands import bulklookup
from splitdns.config import model as configmod
from splitdns.config.model import ConfigError, parse_endpoint
from splitdns.migrate import render, sources, translate
from splitdns.migrate.entries import ImportError_, IPAddress
from splitdns.serve.loops import loop_factory

DEFAULT_LAN = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")


class Upstreams:
    """Plain DNS to the upstreams, for the public answers of the entries' names (a wildcard's:
    of a name below it, translate.probe_name); a cache: names are asked once."""

    def __init__(self, specs: list[str], timeout: float = 2.0) -> None:
        self.servers = [parse_endpoint(s, 53) for s in specs]
        self.timeout = timeout
        self.known: bulklookup.Answers = {"A": {}, "AAAA": {}}
        self.failed: list[str] = []

    def prefetch(self, questions: Iterable[tuple[str, str]]) -> None:
        """Ask `questions` of the first upstream at once (commands/bulklookup.py) into the
        cache, so plan asks one by one only what that left unsettled; skipped at the first
        sign no upstream answers (plan then finds that out and imports offline)."""
        todo = iter(questions)
        first = next(todo, None)
        if first is None:
            return
        try:
            self(*first)
        except ConnectionError:
            return
        lookups = bulklookup.ask_all(
            todo, self.servers[0], self.timeout, self.known, translate.probe_name
        )
        with asyncio.Runner(loop_factory=loop_factory("auto")) as runner:  # (uvloop: 1.6x)
            runner.run(lookups)

    def __call__(self, name: str, rtype: str) -> tuple[IPAddress, ...] | None:
        known = self.known[rtype]
        if name not in known:
            known[name] = self._ask(translate.probe_name(name), rtype)
        return known[name]

    def _ask(self, name: str, rtype: str) -> tuple[IPAddress, ...] | None:
        """The public addresses; None when the name has none (NXDOMAIN, NODATA, or every
        upstream refusing it); ConnectionError when no upstream answers at all."""
        query = dns.message.make_query(name, rtype)
        replied = False
        for server in self.servers:
            try:
                reply = dns.query.udp(query, server.host, port=server.port, timeout=self.timeout)
                if reply.flags & dns.flags.TC:
                    reply = dns.query.tcp(
                        query, server.host, port=server.port, timeout=self.timeout
                    )
            except (dns.exception.DNSException, OSError) as exc:
                self.failed.append(f"{server}: {exc or type(exc).__name__}")
                continue
            replied = True
            if reply.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                continue  # REFUSED, SERVFAIL: perhaps the next one knows it
            wanted = dns.rdatatype.from_text(rtype)
            found = tuple(
                ipaddress.ip_address(rd.address)
                for rrset in reply.answer
                if rrset.rdtype == wanted
                for rd in rrset
            )
            return found or None
        if not replied:
            raise ConnectionError("; ".join(self.failed[-len(self.servers) :]))
        return None


def command(args: argparse.Namespace) -> int:
    try:
        source = sources.read(args.file, args.source_format, int(args.max_size * 1024 * 1024))
    except ImportError_ as exc:  # (a file that is not what it claims: exit 2, as bad usage)
        print(f"splitdns import: {exc}", file=sys.stderr)
        return 2
    try:
        lan = tuple(ipaddress.ip_network(n, strict=False) for n in args.lan or DEFAULT_LAN)
    except ValueError as exc:
        print(f"splitdns import: --lan: {exc}", file=sys.stderr)
        return 2
    specs = args.upstream or [str(u) for u in configmod.resolv_conf_upstreams()]
    lookup: translate.Lookup | None = None
    offline_note = ""
    if not args.offline:
        lookup = Upstreams(specs)
        lookup.prefetch(translate.questions(source))
        try:
            plan = translate.plan(source, lan, lookup)
        except ConnectionError as exc:
            offline_note = f"no upstream answered ({exc}): imported as if --offline"
            lookup = None
    if lookup is None:
        plan = translate.plan(source, lan, None)
    lookup = None  # (the answers are in the plan: not held through the self-check)
    when = datetime.date.today().isoformat()
    try:  # written as they are made: never the plan, the text and the report at once
        made, said = (
            _spooled(render.mapping_lines(plan, args.upstream or [], when)),
            _spooled([offline_note] if offline_note else [], render.report_lines(plan)),
        )
    except OSError as exc:
        print(f"splitdns import: no room for a temporary file: {exc}", file=sys.stderr)
        return 1
    kept = plan if args.verify else None
    del plan, source  # the self-check's tree reuses their memory
    gc.collect()
    with made, said:
        made.seek(0)
        text = made.read()
        made.close()
        try:  # the output always passes `check`
            configmod.loads(text, args.output or "<import>")
        except ConfigError as exc:
            print(
                f"splitdns import: the mapping made does not load (a bug): {exc}", file=sys.stderr
            )
            return 1
        if args.output:
            Path(args.output).write_text(text)
        else:
            sys.stdout.write(text)
        said.seek(0)
        if args.report:
            with open(args.report, "w") as report:
                shutil.copyfileobj(said, report)
        else:
            sys.stdout.flush()
            shutil.copyfileobj(said, sys.stderr if not args.output else sys.stdout)
    if kept is not None:
        return verify(kept, text, specs)
    return 0


def _spooled(*parts: Iterable[str]) -> IO[str]:
    """`parts`' lines in a temporary file (in memory while small)."""
    out: IO[str] = tempfile.SpooledTemporaryFile(1 << 20, "w+", encoding="utf-8")  # noqa: SIM115
    for lines in parts:
        out.writelines(line + "\n" for line in lines)
    return out


def verify(plan: translate.Plan, text: str, upstreams: list[str]) -> int:
    """Start splitdns on the mapping and ask it every imported name from inside each view;
    prints a table and returns 1 on any difference."""
    folder = Path(tempfile.mkdtemp(prefix="splitdns-verify-"))
    folder.chmod(0o755)  # (started as root, splitdns reads it again as its user)
    sources_by_view: dict[str, str] = {}
    lines = [line for line in text.splitlines() if line != render.DASHBOARD]  # (no page here)
    for i, view in enumerate(plan.views):
        host = f"127.0.0.{10 + i}"
        sources_by_view[view.name] = host
        for j, line in enumerate(lines):
            if line == f"  - name: {view.name}":
                lines[j + 1] = lines[j + 1].replace("clients: [", f"clients: [{host}/32, ", 1)
                break
    conf = folder / "verify.yaml"
    conf.write_text("\n".join(lines) + "\nrate_limit: {enabled: false}\n")
    conf.chmod(0o644)
    port = _free_port()
    argv = [sys.executable, "-m", "splitdns", "serve", "-c", str(conf), "--listen",
            f"127.0.0.1:{port}", "--log-level", "info"]  # fmt: skip
    for spec in upstreams:
        argv += ["--upstream", spec]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        said = _started(proc)
        if not said.startswith("serving"):
            print(f"verify: splitdns did not start: {said}")
            return 1
        rows = []
        imported = [(v, n, a) for v, names in plan.imported.items() for n, a in names.items()]
        for in_view, name, expected in sorted(imported, key=lambda row: row[:2]):
            asked = translate.probe_name(name)
            got: list[IPAddress] = []
            for rtype in sorted({"A" if a.version == 4 else "AAAA" for a in expected}):
                got += _ask(port, sources_by_view[in_view], asked, rtype)
            same = sorted(map(str, got)) == sorted(map(str, expected))
            why = "" if same else _why_differs(text, in_view, asked, got)
            rows.append((in_view, name, expected, got, same, why))
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
    width = max([len(r[1]) for r in rows] + [4])
    print(f"verify: {'view':8} {'name':{width}} {'source':24} {'splitdns':24} result")
    for view_name, name, expected, got, same, why in rows:
        print(
            f"verify: {view_name:8} {name:{width}} {', '.join(map(str, expected)):24} "
            f"{', '.join(map(str, got)) or '-':24} {'same' if same else 'DIFFERENT: ' + why}"
        )
    different = sum(1 for r in rows if not r[4])
    print(f"verify: {len(rows) - different} of {len(rows)} the same")
    return 1 if different else 0


def _why_differs(text: str, view_name: str, name: str, got: list[IPAddress]) -> str:
    """What decided splitdns's answer for `name` in the view: a hosts entry (which), or the
    upstream's answer through the rules."""
    said = "no answer" if not got else f"splitdns answers {', '.join(map(str, got))}"
    try:
        config = configmod.loads(text, "<import>")
    except ConfigError:
        return said
    view = next((v for v in config.views if v.name == view_name), None)
    if view is None:
        return said
    if name in view.hosts.exact:
        return f"{said}, from its hosts entry {name}"
    pattern = next((p for p, _ in view.hosts.wildcards if p.matches(name)), None)
    if pattern is not None:
        return f"{said}, from the hosts wildcard {pattern} (hosts answer before rules)"
    return f"{said}: the upstream's answer through the view's rules"


def _started(proc: subprocess.Popen[str], timeout: float = 15.0) -> str:
    """'serving' once the server's startup line is out (its sockets bound), else what it said
    before it stopped (probing for it early could take its port as a probe's own). Its
    output is read to the end meanwhile, so it never blocks on a full pipe."""
    lines: list[str] = []
    serving = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if " serving " in line:
                serving.set()

    threading.Thread(target=read, daemon=True).start()
    if serving.wait(timeout):
        return "serving"
    return "".join(lines)[-2000:] or f"no word within {timeout:g} s"


def _ask(port: int, source: str, name: str, rtype: str) -> list[IPAddress]:
    query = dns.message.make_query(name, rtype)
    try:
        reply = dns.query.udp(query, "127.0.0.1", port=port, source=source, timeout=3)
    except (dns.exception.DNSException, OSError):
        return []
    wanted = dns.rdatatype.from_text(rtype)
    return [
        ipaddress.ip_address(rd.address)
        for rrset in reply.answer
        if rrset.rdtype == wanted
        for rd in rrset
    ]


def _free_port() -> int:
    """A loopback port free for both UDP and TCP."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise OSError("no free loopback port")
