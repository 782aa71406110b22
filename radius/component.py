"""The RADIUS front-end as a daemon component (started after charging, before HTTP)."""

from __future__ import annotations

import logging

from .codec import IMPLEMENTATION
from .dictionary import Dictionary
from .handler import Handler
from .server import RadiusServer

log = logging.getLogger("ocs.radius")


class RadiusComponent:
    name = "radius"

    def __init__(self, ctx):
        self.ctx = ctx
        self.server: RadiusServer | None = None

    async def start(self) -> None:
        cfg = self.ctx.config.radius
        if not cfg.enabled:
            log.info("radius disabled")
            return
        dictionary = Dictionary(cfg.dictionary or None)
        self.server = RadiusServer(self.ctx, Handler(self.ctx, dictionary))
        await self.server.start()
        log.info("radius ready (%d dictionary attributes, %s codec)",
                 len(dictionary.by_name), IMPLEMENTATION)

    def reload_certificates(self) -> None:
        if self.server is not None:
            self.server.reload_certificates()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(min(4.0, self.ctx.config.daemon.drain_timeout))
            self.server = None
