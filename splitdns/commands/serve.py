"""`splitdns serve`: run the server in this process (or in `workers` forked ones) until signalled.

The process around the Server: config overrides, loop choice, dropping root after binding,
reload on SIGHUP and on file change, graceful drain on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import replace

from splitdns import __version__
from splitdns.commands.loading import choose, listen_origin, load_config
from splitdns.config import model as configmod
from splitdns.config.model import Config, ConfigError
from splitdns.listen import lognoise
from splitdns.listen.certs import CertificateError
from splitdns.listen.privileges import PrivilegeError, drop_root, service_user
from splitdns.serve.configwatch import ConfigWatch, file_stamp
from splitdns.serve.loops import loop_factory, loop_name
from splitdns.serve.server import Server
from splitdns.web.api import build_name
from splitdns.web.listeners import OperatorListeners

log = logging.getLogger("splitdns")

WATCH_INTERVAL = 0.25  # seconds between looks at the config file (stamp and inotify)


def command(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    lognoise.install()
    args.config = choose(args.config).path
    try:
        config = load_config(args.config, args.listen, args.upstream)
        origin = listen_origin(config, args.listen)
        if args.workers is not None:
            if not 1 <= args.workers <= 64:
                raise ValueError(f"--workers {args.workers}: must be 1-64")
            config = replace(config, workers=args.workers)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"splitdns: bad command-line value: {exc}", file=sys.stderr)
        return 2
    try:
        factory = loop_factory(args.loop)
    except ImportError:
        print(f"splitdns: --loop {args.loop} is not installed", file=sys.stderr)
        return 2

    def reload() -> Config:
        fresh = load_config(args.config, args.listen, args.upstream)
        return replace(fresh, workers=config.workers)

    if config.workers > 1:
        return _supervise(config, factory, reload, origin)
    return _run_worker(config, factory, reload, origin)


def _run_worker(
    config: Config,
    factory: Callable[[], asyncio.AbstractEventLoop],
    reload: Callable[[], Config],
    origin: str = "",
) -> int:
    with asyncio.Runner(loop_factory=factory) as runner:
        try:
            return runner.run(_run(config, loop_name(factory), reload, origin))
        except (OSError, PrivilegeError, CertificateError) as exc:
            print(f"splitdns: {exc}", file=sys.stderr)
            return 1


def _supervise(
    config: Config,
    factory: Callable[[], asyncio.AbstractEventLoop],
    reload: Callable[[], Config],
    origin: str = "",
) -> int:
    """Fork `workers` processes that share each port; pass signals on; exit when all have."""
    children: list[int] = []
    for _ in range(config.workers):
        pid = os.fork()
        if pid == 0:
            os._exit(_run_worker(config, factory, reload, origin))
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    worst = 0
    for child in children:
        _, status = os.waitpid(child, 0)
        code = os.waitstatus_to_exitcode(status)
        worst = max(worst, code if code >= 0 else 128 - code)
    return worst


def _try_reload(
    server: Server, reload: Callable[[], Config], why: str, watched: bool = False
) -> None:
    """Load the file again; a bad file is logged with its precise error and changes nothing.
    Every rule a reload removes is logged. `watched` (the file watch, not an operator's
    SIGHUP): a file that takes every rule from a view that had some is not applied (a file
    caught half-written looks just like that); SIGHUP applies it."""
    try:
        config = reload()
    except (ConfigError, ValueError) as exc:
        server.note_reload(why, str(exc))
        log.error("reload (%s) rejected, still serving the previous config: %s", why, exc)
        return
    removed, emptied = rules_removed(server.config, config)
    if watched and emptied:
        problem = (
            f"{config.source}: the change leaves view(s) {', '.join(emptied)} without the "
            "rewrite rules they had (a file caught half-written looks like that): not applied; "
            "send SIGHUP (systemctl reload splitdns, podman kill -s HUP splitdns) to apply it"
        )
        server.note_reload(why, problem)
        log.error("reload (%s) held back, still serving the previous config: %s", why, problem)
        return
    server.note_reload(why, None)
    notes = server.reload(config)
    log.info("reloaded (%s): %s", why, "; ".join(notes))
    for line in removed:
        log.info("reload (%s) removed %s", why, line)


def rules_removed(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """(each rule of `old` that `new` no longer has, in words; the views that had rules and
    have none, or are gone)."""
    after = {view.name: view for view in new.views}
    removed: list[str] = []
    emptied: list[str] = []
    for view in old.views:
        kept = after.get(view.name)
        still = {str(rule) for rule in kept.rules} if kept is not None else set()
        gone = [str(rule) for rule in view.rules if str(rule) not in still]
        removed += [f"view {view.name}: rewrite {rule}" for rule in gone]
        if view.rules and not still:
            emptied.append(view.name)
    return removed, emptied


async def _watch(server: Server, reload: Callable[[], Config], watch: ConfigWatch) -> None:
    """Reload when the config file has changed and is whole (serve/configwatch.py), looked at
    every WATCH_INTERVAL: a change made while the server started counts too."""
    path = server.config.source
    if not os.path.exists(path):
        return
    told = False
    while True:
        await asyncio.sleep(WATCH_INTERVAL)
        now = file_stamp(path)
        if now is not None and now[3] == 0 and not told:
            # replaced (a new inode) behind a single-file bind mount, which keeps showing the
            # old, deleted one: edits can never reach us. Said once.
            told = True
            log.warning(
                "%s was replaced on the host (sed -i, an editor, git pull), but this single-file "
                "mount still shows the old one, so the change cannot be seen: mount the "
                "directory instead (-v DIR:%s:ro) and restart",
                path,
                os.path.dirname(path) or ".",
            )
        stamp = watch.due()
        if stamp is not None:
            _try_reload(server, reload, "file changed", watched=True)
            watch.done(stamp)


async def _run(config: Config, loop: str, reload: Callable[[], Config], origin: str = "") -> int:
    watch = ConfigWatch(config.source, file_stamp(config.source))
    server = Server(config)
    await server.start()
    operator = OperatorListeners(server)
    try:
        await operator.start()
        user = drop_root(service_user(config.user))
    except (OSError, PrivilegeError, CertificateError):
        await operator.stop()
        await server.stop(0)
        raise
    if not config.upstreams:
        log.warning("no upstream servers: pass --upstream or set `upstreams:`")
    log.info("%s", startup_line(config, server, loop, user, origin))
    settle_garbage_collector()
    stopping = asyncio.Event()
    running = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        running.add_signal_handler(sig, stopping.set)
    running.add_signal_handler(signal.SIGHUP, _try_reload, server, reload, "SIGHUP")
    watcher = asyncio.ensure_future(_watch(server, reload, watch))
    await stopping.wait()
    watcher.cancel()
    watch.writers.close()
    log.info("shutting down: draining in-flight queries")
    await operator.stop()
    await server.stop(drain=min(config.timeout + 0.5, 5.0))
    log.info("stopped")
    return 0


#: Young-generation threshold: a miss makes a few dozen short-lived objects; collecting every
#: 700 allocations (CPython's default) ran the collector several times per query burst.
GC_GEN0 = int(os.environ.get("SPLITDNS_GC_GEN0", "20000"))


def settle_garbage_collector() -> None:
    """Startup's objects (config, codecs, dnspython's tables) live as long as the process:
    freeze them out of every later collection, and collect the young generation less often.
    Reference cycles are still collected; only the cadence changes."""
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(max(1, GC_GEN0), second, third)


def startup_line(
    config: Config, server: Server, loop: str, user: str | None, origin: str = ""
) -> str:
    listening = ", ".join(f"{ep} ({kind})" for kind, ep in server.bound)
    if origin:
        listening += f" (from {origin})"
    ups = ", ".join(map(str, config.upstreams)) or "NONE (every query gets SERVFAIL)"
    if config.forwarding.domains:
        ups += f" + {len(config.forwarding.domains)} domain routes"
    if config.source == configmod.EMBEDDED_SOURCE:
        what = "embedded default config: no rewrites until configured (splitdns serve -c FILE)"
    else:
        views = ", ".join(f"{v.name} ({len(v.rules)} rules)" for v in config.views) or "none"
        what = f"config {config.source}: views {views}"
    who = f"; running as {user}" if user else ""
    tls = ""
    if server.encrypted.files is not None:
        files = server.encrypted.files
        made = "self-signed " if files.self_signed else ""
        tls = f"; {made}certificate {files.cert} pin-sha256 {server.encrypted.pin}"
    return (
        f"splitdns {__version__} serving {listening}; upstreams {ups} (from "
        f"{config.upstreams_origin}); {what}; loop {loop}; {build_name()}{who}{tls}"
    )
