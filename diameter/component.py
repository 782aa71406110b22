"""The Diameter front-end as a daemon component (start/stop) and its API for policy.

The daemon starts it after the charging core and before the HTTP API, and
stops it first: listeners close, credit-control requests in flight finish,
every peer gets a DPR (Disconnect-Cause REBOOTING), then the sockets close.
Customer sessions stay alive: their state is in the store, and clients
resume them with this node after a restart or with another node at once.

For the policy layer (enforcement after a top-up, plan change or
suspension), published as ``ctx.diameter`` while it runs::

    result = await component.re_auth(session_id)        # RAR -> client asks again
    result = await component.abort_session(session_id)  # ASR -> client ends it
    result.answered, result.result_code, result.attempts, result.error
"""

from __future__ import annotations

import logging
import ssl

from ocs.components import reloaded_tls_context, split_listen, tls_server_context
from ocs.config import diameter_request_budget

from .server import DiameterServer, ServerRequestResult

log = logging.getLogger("ocs.diameter")


class DiameterComponent:
    """Listeners on `[diameter] listen` (and `tls_listen`), the server behind them."""

    name = "diameter"

    def __init__(self, ctx):
        self.ctx = ctx
        self.server: DiameterServer | None = None
        self._tls: ssl.SSLContext | None = None  # the newest certificates, key and CA

    async def start(self) -> None:
        cfg = self.ctx.config.diameter
        if not cfg.enabled:
            log.info("Diameter disabled")
            return
        server = DiameterServer(
            cfg, charging=self.ctx.charging, cluster=self.ctx.cluster, metrics=self.ctx.metrics,
            registry=lambda: self.ctx.registry,
            session_ttl=float(self.ctx.config.charging.idle_timeout))
        self.server = server
        try:
            host, port = split_listen(cfg.listen)
            await self._bind(server, "diameter", host, port, None, cfg.listen)
            if cfg.tls_listen:
                try:
                    context = tls_server_context(cfg)
                except (OSError, ssl.SSLError) as exc:
                    raise OSError(getattr(exc, "errno", None),
                                  f"cannot load the Diameter TLS certificate: {exc}") from exc
                # The listener keeps its context; each handshake switches to the
                # newest one, so SIGHUP can rotate certificates and CAs.
                context.sni_callback = self._newest_certificates
                self._tls = context
                host, port = split_listen(cfg.tls_listen)
                await self._bind(server, "diameter-tls", host, port, context, cfg.tls_listen)
        except BaseException:
            await server.close(0.1)
            self.server = None
            raise
        # The policy layer finds this API as ctx.diameter (it starts before us).
        self.ctx.diameter = self
        if not (cfg.allowed_hosts or cfg.allowed_realms or cfg.allowed_addresses) and not any(
                n.kind.value == "diameter" for n in self.ctx.registry.nas):
            log.warning("no Diameter peer is allowed yet: set [diameter] allowed_* or add a "
                        "NAS of kind diameter")

    async def _bind(self, server, name, host, port, context, listen) -> None:
        try:
            await server.listen(name, host, port, context)
        except OSError as exc:
            import os
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise OSError(exc.errno, f"cannot listen on {listen} ({name}): {why}") from exc
        log.info("%s listening on %s as %s", name, listen, self.ctx.config.diameter.origin_host)

    def _newest_certificates(self, tls_object, server_name, listener_context) -> None:
        """Called on every ClientHello, with or without SNI (server_name None)."""
        if self._tls is not listener_context:
            tls_object.context = self._tls

    def reload_certificates(self) -> None:
        """SIGHUP: the TLS certificate, key and CA files read again (rotated in place);
        new connections use them, open ones keep theirs. A file that cannot be loaded
        keeps the running ones."""
        if self._tls is not None:
            self._tls = reloaded_tls_context(self.ctx.config.diameter, self._tls, "Diameter")

    async def stop(self) -> None:
        if getattr(self.ctx, "diameter", None) is self:
            self.ctx.diameter = None
        server, self.server = self.server, None
        if server is None:
            return
        open_peers = sum(1 for c in server.connections if c.is_open)
        await server.close(min(self.ctx.config.daemon.drain_timeout, 5.0))
        log.info("Diameter stopped (%d peers sent DPR)", open_peers)

    # ------------------------------------------------------------ API for policy/
    @property
    def longest(self) -> float:
        """Seconds a RAR or ASR may take, resends included, also when another node
        sends it."""
        return diameter_request_budget(self.server.config if self.server is not None
                                       else self.ctx.config.diameter)

    async def re_auth(self, session_id: str, *, rating_group: int | None = None
                      ) -> ServerRequestResult:
        """Re-Auth-Request to the session's client; see `DiameterServer.re_auth`."""
        if self.server is None:
            return ServerRequestResult(session_id, "RAR", False, error="Diameter is not running")
        return await self.server.re_auth(session_id, rating_group=rating_group)

    async def abort_session(self, session_id: str) -> ServerRequestResult:
        """Abort-Session-Request to the session's client; see `DiameterServer.abort_session`."""
        if self.server is None:
            return ServerRequestResult(session_id, "ASR", False, error="Diameter is not running")
        return await self.server.abort_session(session_id)
