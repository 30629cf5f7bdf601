"""Who may publish, decided at the origin before anything is claimed: a signed, expiring publish URL
(``publish_secret``), an ``on_publish`` webhook, both, or anyone when the operator says so.

The webhook gets a JSON POST {action, stream, app, name, client, query, node}; any 2xx allows. The body
is signed: ``X-Livecdn-Timestamp`` (unix seconds) and ``X-Livecdn-Signature: sha256=<hex HMAC of
"<timestamp>.<body>" with the cluster secret>``, so the receiver can tell it is us and refuse replays.
A webhook that cannot be reached refuses the publish unless ``on_publish_fail_open``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable

import aiohttp

from common.keys import StreamKey
from common.runtime.config import OriginSettings, secret
from common.serving.policy import Rejected
from common.signing import PUBLISH, refusal, without_signature

log = logging.getLogger(__name__)

REFUSED = "NetStream.Publish.BadName"


def webhook_signature(secret_value: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret_value.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


class PublishAuth:
    def __init__(self, settings: OriginSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self._secret = secret(settings.publish_secret)
        self._cluster_secret = secret(settings.cluster_secret)
        self._session: aiohttp.ClientSession | None = None
        if settings.open_publish and self._secret is None and settings.on_publish is None:
            log.warning("open_publish: ANYONE who reaches this origin may publish any stream (no publish auth)")

    async def check(self, key: StreamKey, query: str, peer: str) -> None:
        """Raise Rejected unless this publish is allowed."""
        if self._secret is not None:
            why = refusal(self._secret, PUBLISH, key, query, self.clock())
            if why is not None:
                raise Rejected(REFUSED, f"{key}: not authorized to publish ({why})")
        if self.settings.on_publish is not None:
            await self._ask_webhook(key, query, peer)

    async def _ask_webhook(self, key: StreamKey, query: str, peer: str) -> None:
        settings = self.settings
        assert self._cluster_secret is not None  # the settings require it with on_publish
        body = json.dumps(
            {
                "action": "publish",
                "stream": str(key),
                "app": key.app,
                "name": key.name,
                "client": peer.rpartition(":")[0] or peer,
                "query": without_signature(query),
                "node": settings.node_id,
            },
            separators=(",", ":"),
        ).encode()
        timestamp = str(int(self.clock()))
        headers = {
            "Content-Type": "application/json",
            "X-Livecdn-Timestamp": timestamp,
            "X-Livecdn-Signature": webhook_signature(self._cluster_secret, timestamp, body),
        }
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=settings.on_publish_timeout))
        url = str(settings.on_publish)
        try:
            async with self._session.post(url, data=body, headers=headers) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            if settings.on_publish_fail_open:
                log.warning("%s: on_publish webhook unreachable (%s); allowed: on_publish_fail_open", key, exc)
                return
            raise Rejected(REFUSED, f"{key}: publish authorization unavailable, try again") from None
        if not 200 <= status < 300:
            raise Rejected(REFUSED, f"{key}: publish refused by the on_publish webhook (HTTP {status})")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
