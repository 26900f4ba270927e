"""The operator's web application (Starlette): the dashboard page, its JSON under /api, the
live query stream (server-sent events), the explain form's answers, /metrics and /healthz.

Read-only by design: the YAML file is the one source of truth (watched and reloaded), so the
page shows and explains but never edits. Every response carries a Content-Security-Policy of
`default-src 'self'` (the page's scripts and styles are files of this package, none from any
other origin: the LAN may be offline); a bad request value gets a 4xx naming it.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request, cookie_parser
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from splitdns.serve.explaining import explain
from splitdns.serve.server import Server
from splitdns.web import api as webapi
from splitdns.web.auth import COOKIE, SESSION_SECONDS, Gate, PasswordFile, Refused
from splitdns.web.hosts import CheckHost, Hosts
from splitdns.web.httpserver import HELD, Held
from splitdns.web.livefeed import LiveFeed
from splitdns.web.metrics import SplitdnsCollector

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]
KEEPALIVE = 15.0  # seconds between comments on an idle live stream (finds closed browsers)
LOGIN_BODY = 4096
BODY_DEADLINE = 5.0  # seconds for a whole form to arrive once its headers have
EXPLAIN_RATE, EXPLAIN_BURST = 1.0, 5.0  # per address: one a second, five at once


class SecurityHeaders:
    """Adds HEADERS to every response (pure ASGI, so streams pass through untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


class Operator:
    """The routes over one running server. `dashboard`: False serves /metrics and /healthz
    only (a `metrics:` address apart from the dashboard's)."""

    def __init__(
        self,
        server: Server,
        feed: LiveFeed,
        dashboard: bool,
        listen_host: str,
        https: bool = False,
    ) -> None:
        self.server = server
        self.feed = feed
        self.dashboard = dashboard
        self.https = https
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SplitdnsCollector(lambda: server, feed))
        self.started = server.config.dashboard
        self.gate = Gate(PasswordFile(self._password_path))
        self._explains: dict[str, list[float]] = {}
        self.hosts = Hosts(listen_host, self._names)

    def _names(self) -> tuple[str, ...]:
        """Names the mapping gives this listener (read per request: a reload may add some)."""
        config = self.server.config
        board = config.dashboard
        names = board.names if board is not None else ()
        return (*names, config.resolver_name) if config.resolver_name else names

    def _password_path(self) -> str | None:
        """The current mapping's password file while it names the address this listener
        was bound to; after a reload that moved or dropped `dashboard:` (a restart applies
        that), the one it started with: a reload can never open a listener beyond loopback."""
        now, started = self.server.config.dashboard, self.started
        if started is None:
            return None
        same = now is not None and (now.host, now.port, now.https) == (
            started.host,
            started.port,
            started.https,
        )
        return now.password_file if same and now is not None else started.password_file

    def app(self) -> ASGIApp:
        routes: list[BaseRoute] = [
            Route("/metrics", self.metrics),
            Route("/healthz", self.healthz),
        ]
        if self.dashboard:
            routes += [
                Route("/", self.page),
                Route("/login", self.login_page, methods=["GET"]),
                Route("/login", self.login, methods=["POST"]),
                Route("/logout", self.logout, methods=["POST"]),
                Route("/api/status", self.api(self._status)),
                Route("/api/series", self.api(lambda: self.server.history.series())),
                Route("/api/rules", self.api(lambda: webapi.rules(self.server))),
                Route("/api/clients", self.api(lambda: webapi.clients(self.server, self.feed))),
                Route("/api/names", self.api(lambda: webapi.local_names(self.server))),
                Route("/api/stream", self.stream),
                Route("/api/explain", self.explain),
                Mount("/static", StaticFiles(directory=STATIC), name="static"),
            ]
        app = Starlette(routes=routes)
        app.add_exception_handler(404, _not_found if self.dashboard else _metrics_only)
        app.add_exception_handler(405, _not_allowed)
        return SecurityHeaders(CheckHost(app, self.hosts))

    # ------------------------------------------------------------------ open to all

    async def metrics(self, request: Request) -> Response:
        # on the event loop, as the counters change there (a thread would read them mid-way)
        body = generate_latest(self.registry)
        return Response(body, media_type="text/plain; version=0.0.4")

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")

    # ------------------------------------------------------------------ logging in

    def trusted(self, scope: Scope) -> bool:
        """Whether a request came with a live session (the listener never closes such a
        connection for another); without a password nobody logs in, so nobody is."""
        if not self.gate.required:
            return False
        for key, value in scope.get("headers", ()):
            if key == b"cookie":
                token = cookie_parser(value.decode("latin-1")).get(COOKIE)
                if self.gate.valid(token):
                    return True
        return False

    def _session(self, request: Request) -> bool:
        return self.gate.valid(request.cookies.get(COOKIE))

    async def login_page(self, request: Request) -> Response:
        if not self.gate.required or self._session(request):
            return RedirectResponse("/", 303)
        return _login_page()

    async def login(self, request: Request) -> Response:
        refused = _cross_site(request, self.hosts)
        if refused is not None:
            return refused
        if not self.gate.required:
            return RedirectResponse("/", 303)
        host = _peer(request)
        wait = self.gate.locked_for(host)
        if wait > 0:
            why = f"Too many failed logins from {host}: try again in {wait:.0f} s."
            return _login_page(why, 429, wait)
        try:
            body = await _bounded_body(request, LOGIN_BODY, BODY_DEADLINE)
        except TimeoutError:
            return _login_page("The login form did not arrive in time.", 408)
        except ClientDisconnect:
            log.debug("dashboard: %s went away while sending a login form", host)
            return Response(status_code=400)  # (nobody reads it)
        if body is None:
            return _login_page("The login form is too large.", 413)
        try:
            fields = parse_qs(body.decode("utf-8"), max_num_fields=4)
        except (UnicodeDecodeError, ValueError):
            return _login_page("The login form could not be read.", 400)
        password = (fields.get("password") or [""])[0]
        try:
            token = await self.gate.login(host, password)
        except Refused as brake:
            return _login_page(str(brake), 429, brake.wait)
        if token is None:
            return _login_page("Wrong password.", 401)
        response = RedirectResponse("/", 303)
        response.set_cookie(
            COOKIE,
            token,
            max_age=SESSION_SECONDS,
            path="/",
            secure=self.https,
            httponly=True,
            samesite="strict",
        )
        return response

    async def logout(self, request: Request) -> Response:
        refused = _cross_site(request, self.hosts)
        if refused is not None:
            return refused
        self.gate.logout(request.cookies.get(COOKIE))
        response = RedirectResponse("/login" if self.gate.required else "/", 303)
        response.delete_cookie(COOKIE, path="/", secure=self.https, httponly=True,
                               samesite="strict")  # fmt: skip
        return response

    # ------------------------------------------------------------------ the dashboard

    async def page(self, request: Request) -> Response:
        if not self._session(request):
            return RedirectResponse("/login", 303)
        page = (STATIC / "index.html").read_text(encoding="utf-8")
        return HTMLResponse(
            first_paint(page, self._status()), headers={"cache-control": "no-store"}
        )

    def _status(self) -> dict[str, Any]:
        return {**webapi.status(self.server), "login": self.gate.required}

    def api(self, build: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            if not self._session(request):
                return _refused(401, "log in first")
            if request.query_params:
                return _refused(400, f"unknown parameter {next(iter(request.query_params))!r}")
            return _json(build())

        return endpoint

    async def stream(self, request: Request) -> Response:
        if not self._session(request):
            return _refused(401, "log in first")
        try:
            wanted = webapi.stream_filter(_params(request), self.server)
        except webapi.BadRequest as exc:
            return _refused(400, str(exc))
        feed = self.feed
        held: Held | None = request.scope.get(HELD)
        subscriber = feed.subscribe(wanted, held.close if held is not None else None)
        if subscriber is None:
            return _refused(429, "too many live streams are open: close another dashboard tab")

        async def events() -> Any:
            if held is not None:
                held.streaming += 1  # (the listener's read timeout spares it)
            try:
                yield "retry: 3000\n\n"
                while True:
                    try:
                        batch = await asyncio.wait_for(subscriber.queue.get(), KEEPALIVE)
                    except TimeoutError:
                        yield ": still here\n\n"
                        continue
                    yield f"data: {batch}\n\n"
            finally:
                feed.unsubscribe(subscriber)
                if held is not None:
                    held.streaming -= 1

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    async def explain(self, request: Request) -> Response:
        if not self._session(request):
            return _refused(401, "log in first")
        try:
            name, client, qtype = webapi.explain_question(_params(request))
        except webapi.BadRequest as exc:
            return _refused(400, str(exc))
        wait = self._explain_wait(_peer(request))
        if wait > 0:
            return _refused(429, f"explain answers one question a second: wait {wait:.1f} s", wait)
        server = self.server
        try:
            async with asyncio.timeout(server.config.timeout * 3 + 2):
                lines = await explain(server.config, name, client, qtype, server)
        except TimeoutError:
            return _refused(504, "no answer in time (see the upstreams' health)")
        except ValueError as exc:
            return _refused(400, str(exc))
        except Exception as exc:  # a bug: logged; the page gets a reason, never a traceback
            log.exception("explain %s %s for %s failed", name, qtype, client)
            return _refused(500, f"explain failed: {type(exc).__name__}")
        return _json({"name": name, "client": client, "type": qtype, "lines": lines})

    def _explain_wait(self, host: str) -> float:
        """A token bucket per address: seconds to wait, or 0 (a token taken)."""
        now = time.monotonic()
        bucket = self._explains.get(host)
        if bucket is None:
            if len(self._explains) >= 1024:
                self._explains.clear()
            bucket = self._explains[host] = [EXPLAIN_BURST, now]
        tokens = min(EXPLAIN_BURST, bucket[0] + (now - bucket[1]) * EXPLAIN_RATE)
        bucket[1] = now
        if tokens < 1:
            bucket[0] = tokens
            return (1 - tokens) / EXPLAIN_RATE
        bucket[0] = tokens - 1
        return 0.0


# ------------------------------------------------------------------ helpers


def first_paint(page: str, status: dict[str, Any]) -> str:
    """The page with its health filled in by the server, so the first paint (and a browser
    without scripts, or a screenshot taken at once) shows it; the script refreshes it."""
    esc = html.escape
    queries = sum(status["queries"].values())
    ratio = status["cache"]["hit_ratio"]
    down = sum(1 for u in status["upstreams"] if not u["up"])
    summary = f"{status['version']} · {status['build']} · {queries} queries answered"
    summary += f" · {ratio * 100:.1f}% from cache" if ratio is not None else ""
    summary += f" · {down} upstream{'s' if down > 1 else ''} down" if down else ""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status["serving_since"]))
    reload = status["reload"]
    if reload is None:
        reloaded = "none since start"
    elif reload["ok"]:
        reloaded = f"applied ({esc(reload['why'])})"
    else:
        reloaded = f"refused ({esc(reload['why'])}): {esc(reload['error'] or '')}"
    listeners = "".join(
        f'<li><strong>{esc(item["kind"])} </strong><span class="mono">{esc(item["address"])}'
        "</span>"
        + (f'<div class="mono hint pin">pin-sha256 {esc(item["pin_sha256"])}</div>'
           if item.get("pin_sha256") else "")
        + "</li>"
        for item in status["listeners"]
    )  # fmt: skip
    rows = "".join(
        f'<tr data-upstream="{esc(u["name"])}"><td class="mono">{esc(u["name"])}</td>'
        f'<td><span class="badge {"up" if u["up"] else "down"}">{"up" if u["up"] else "down"}'
        f"</span></td><td>{_ms(u.get('p50_ms'))}</td><td>{_ms(u.get('p99_ms'))}</td>"
        f"<td>{u.get('answers', '')}</td><td></td></tr>"
        for u in status["upstreams"]
    )
    for old, new in (
        ('<p id="summary" aria-live="polite">Loading…</p>',
         f'<p id="summary" aria-live="polite">{esc(summary)}</p>'),
        ('<dd id="since">…</dd>', f'<dd id="since">{since}</dd>'),
        ('<dd id="config-file">…</dd>', f'<dd id="config-file">{esc(status["config_file"])}</dd>'),
        ('<dd id="reload">…</dd>', f'<dd id="reload">{reloaded}</dd>'),
        ('<ul id="listeners"></ul>', f'<ul id="listeners">{listeners}</ul>'),
        ('<tbody id="upstreams"></tbody>', f'<tbody id="upstreams">{rows}</tbody>'),
    ):  # fmt: skip
        page = page.replace(old, new, 1)
    if status.get("login"):  # a password guards it: the way out is there from the first paint
        page = page.replace('<form id="logout" method="post" action="/logout" hidden>',
                            '<form id="logout" method="post" action="/logout">', 1)  # fmt: skip
    return page


def _ms(value: float | None) -> str:
    return "\u2013" if value is None else f"{value:.1f} ms"


def _json(data: Any) -> Response:
    body = json.dumps(data, separators=(",", ":")).encode()
    return Response(body, media_type="application/json", headers={"cache-control": "no-store"})


def _refused(status: int, why: str, retry: float = 0.0) -> Response:
    headers = {"cache-control": "no-store"}
    if retry:
        headers["retry-after"] = str(max(1, round(retry)))
    return JSONResponse({"error": why}, status_code=status, headers=headers)


def _login_page(message: str = "", status: int = 200, retry: float = 0.0) -> Response:
    page = (STATIC / "login.html").read_text(encoding="utf-8")
    page = page.replace("<!--message-->", html.escape(message))
    headers = {"cache-control": "no-store"}
    if retry:
        headers["retry-after"] = str(max(1, round(retry)))
    return HTMLResponse(page, status_code=status, headers=headers)


def _params(request: Request) -> dict[str, str]:
    """The query string's parameters, each once (a repeated one keeps its last value)."""
    return dict(request.query_params.items())


def _peer(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _cross_site(request: Request, hosts: Hosts) -> Response | None:
    """A form posted from another site (the session cookie is SameSite=Strict already): told
    by Sec-Fetch-Site where the browser sends it, else by Origin, which must name one of the
    listener's own hosts (never compared with the request's Host: a rebound name would
    match itself); neither: not a browser."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        if site in ("same-origin", "none"):
            return None
        return _refused(403, "a form from another site was refused")
    origin = request.headers.get("origin")
    if origin is None or hosts.origin_allowed(origin):
        return None
    return _refused(403, "a form from another site was refused")


async def _bounded_body(request: Request, limit: int, deadline: float) -> bytes | None:
    """The body, None when it is over `limit` (told by Content-Length before a byte is read);
    TimeoutError when it has not all come within `deadline` seconds."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    parts: list[bytes] = []
    size = 0
    async with asyncio.timeout(deadline):
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return None
            parts.append(chunk)
    return b"".join(parts)


async def _not_found(request: Request, exc: Exception) -> Response:
    return _refused(404, f"nothing at {request.url.path[:100]}")


async def _metrics_only(request: Request, exc: Exception) -> Response:
    return _refused(
        404, "this address serves /metrics and /healthz; the dashboard is at dashboard.listen"
    )


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return _refused(405, f"{request.method} is not used at {request.url.path[:100]}")
