"""LL-HLS in a node of several worker processes: every stream is packaged by one worker, its owner.

A playlist names segments and parts by number, counted from when its packager started: two workers
packaging one stream would number them differently, and a player whose requests land on both (it opens
several connections; the kernel spreads them over the workers) would be sent the wrong media. So a worker
passes the LL-HLS requests of a stream it does not own on to the owner's private loopback HTTP port, and
the owner serves them from the node's one packager of the stream. The owner tells those players apart by
the address the passing worker vouches for (with the node's secret), as a node of one process would.
"""

from __future__ import annotations

import hmac
import logging
from typing import Final

import aiohttp
from aiohttp import web

from common.keys import StreamKey
from common.runtime.workerplan import LOOPBACK, WorkerPlan
from common.serving.hls import CORS, Handler, HlsService

log = logging.getLogger(__name__)

FORWARDED_FOR: Final = "X-Livecdn-Forwarded-For"
WORKER_TOKEN: Final = "X-Livecdn-Worker"
# Past the longest an owner holds a blocking request (three target durations, a GOP each).
FORWARD_TIMEOUT: Final = 60.0
PASSED_BACK: Final = ("Content-Type", "Cache-Control", "Access-Control-Allow-Origin", "Retry-After")
# Requests passed on at once (each one a player's held request): past it they wait for a connection.
MAX_PASSED_ON: Final = 20_000


class HlsToOwner:
    def __init__(self, plan: WorkerPlan, hls: HlsService) -> None:
        self.plan = plan
        self.handlers: frozenset[Handler] = frozenset(handler for _, handler in hls.routes())
        hls.client_address = self.client_address
        self.passed_on = 0  # requests passed on to their stream's owner
        self._session: aiohttp.ClientSession | None = None

    def vouched(self, request: web.Request) -> bool:
        """Whether a sibling worker passed this request on (then it is never passed on again)."""
        token = request.headers.get(WORKER_TOKEN)
        return token is not None and hmac.compare_digest(token.encode(), self.plan.secret.encode())

    def client_address(self, request: web.Request) -> str:
        claimed = request.headers.get(FORWARDED_FOR)
        if claimed and self.vouched(request):
            return claimed
        return request.remote or "?"

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.handler not in self.handlers or self.vouched(request):
            return await handler(request)
        key = StreamKey(request.match_info.get("app", ""), request.match_info.get("name", ""))
        if not key.valid or self.plan.owner_of(key) == self.plan.index:
            return await handler(request)
        return await self._pass_on(request, key)

    async def _pass_on(self, request: web.Request, key: StreamKey) -> web.Response:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=MAX_PASSED_ON),
                timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT),
            )
        owner = self.plan.owner_of(key)
        self.passed_on += 1
        url = f"http://{LOOPBACK}:{self.plan.http_ports[owner]}{request.rel_url}"
        headers = {FORWARDED_FOR: request.remote or "?", WORKER_TOKEN: self.plan.secret}
        if "User-Agent" in request.headers:
            headers["User-Agent"] = request.headers["User-Agent"]
        try:
            async with self._session.get(url, headers=headers, allow_redirects=False) as response:
                body = await response.read()
                passed = {name: response.headers[name] for name in PASSED_BACK if name in response.headers}
                return web.Response(status=response.status, body=body, headers=passed)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("%s: worker %d, which packages it, did not answer: %r", key, owner, exc)
            raise web.HTTPServiceUnavailable(
                text=f"the worker that packages {key} does not answer; retry\n", headers={**CORS, "Retry-After": "1"}
            ) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
