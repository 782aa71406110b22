"""The enforcement component of the daemon: `PolicyComponent(ctx)`.

Started after the charging core and before the protocol listeners (so it is
stopped after them: an event a listener's last request caused is still
handled). It puts the running `PolicyService` on the daemon context as
`ctx.policy` for the API; with ``[policy] enabled = false`` it leaves
`ctx.policy` None and enforces nothing (events stay in the outbox history).
"""

from __future__ import annotations

import logging

log = logging.getLogger("ocs.policy")


class PolicyComponent:
    name = "policy"

    def __init__(self, ctx):
        self.ctx = ctx
        self.service = None

    async def start(self) -> None:
        self.ctx.policy = None
        if not self.ctx.config.policy.enabled:
            log.info("enforcement disabled (policy.enabled = false)")
            return
        from .service import PolicyService
        service = PolicyService(self.ctx)
        await service.start()
        self.service = self.ctx.policy = service

    async def stop(self) -> None:
        self.ctx.policy = None
        if self.service is not None:
            await self.service.stop()
            self.service = None
