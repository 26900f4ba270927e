"""The operator's listeners beside the DNS ones: the dashboard's address and, where it is
another, the `metrics:` address (which then serves /metrics and /healthz only; a dashboard
that cannot bind is logged and DNS goes on, a metrics address that cannot stops the start,
as it always has). Started by
`splitdns serve` after the DNS listeners, before root is dropped (a port below 1024, a
password file only root may read); their addresses join the server's `bound` list.
"""

from __future__ import annotations

import logging
import ssl

from splitdns.config.model import Endpoint
from splitdns.listen.encrypted import certificate
from splitdns.listen.privileges import service_user
from splitdns.serve.server import Server
from splitdns.web.app import Operator
from splitdns.web.httpserver import OperatorListener
from splitdns.web.livefeed import LiveFeed

log = logging.getLogger(__name__)


class OperatorListeners:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.listeners: list[OperatorListener] = []
        # the live queries, one feed for every dashboard listener (the server taps for it)
        self.feed = LiveFeed(server.watch, lambda: server.config.query_log.hide_clients)

    async def start(self) -> None:
        """Bind them; OSError (with the address and what it is for) if one cannot be."""
        server = self.server
        config = server.config
        dashboard = config.dashboard
        try:
            if dashboard is not None:
                endpoint = Endpoint(dashboard.host, dashboard.port)
                context = self._tls_context() if dashboard.https else None
                operator = Operator(server, self.feed, True, dashboard.host, https=dashboard.https)
                listener = OperatorListener(operator.app(), context, operator.trusted)
                try:
                    bound = await listener.start(endpoint, "dashboard, HTTP")
                except OSError as exc:  # DNS matters more: it is served without the page
                    log.error("%s; DNS is served without the dashboard", exc)
                else:
                    self.listeners.append(listener)
                    scheme = "https" if dashboard.https else "http"
                    server.bound.append(("dashboard", f"{scheme}://{bound}/"))
                    if config.metrics == endpoint:
                        server.bound.append(("metrics", bound))
                        return
            if config.metrics is not None:
                listener = OperatorListener(
                    Operator(server, self.feed, False, config.metrics.host).app()
                )
                bound = await listener.start(config.metrics, "metrics, HTTP")
                self.listeners.append(listener)
                server.bound.append(("metrics", bound))
        except OSError:
            await self.stop()
            raise

    def _tls_context(self) -> ssl.SSLContext:
        """The DoT/DoH certificate's, read (or made) as theirs is: as the user splitdns
        becomes, whose key root without DAC_OVERRIDE (the image's) may not read."""
        config = self.server.config
        context = certificate(config, service_user(config.user))[3]
        reloader = self.server.encrypted.reloader
        if reloader is not None:  # renewed files reach the dashboard as they reach DoT/DoH
            reloader.contexts.append(context)
        return context

    async def stop(self) -> None:
        self.feed.stop()
        for listener in self.listeners:
            await listener.stop()
        self.listeners.clear()
