"""Is the origin holding a stream's claim gone? Asked before taking its claim over, so a publisher that
moves after its origin died is accepted in seconds, not after the claim's whole TTL."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

from common.registry import Registry, StreamClaim

PROBE_TIMEOUT = 1.0  # seconds: a connect that neither succeeds nor is refused proves nothing


async def refuses_connections(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    """True only when the host answers that nothing listens on the port (connection refused): the process
    is not there. A timeout (partition, frozen host) or a success says nothing of the kind."""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except ConnectionRefusedError:
        return True
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return False


async def why_owner_is_gone(registry: Registry, claim: StreamClaim) -> str | None:
    """Why ``claim``'s origin can be taken over from, or None while it may still be serving the stream."""
    origins = {node.id: node for node in await registry.nodes("origin")}
    owner = origins.get(claim.origin)
    if owner is None:
        return "its node record has lapsed (no heartbeat)"
    if owner.draining:
        return "it is draining"
    address = urlsplit(claim.rtmp_url)
    if address.hostname and await refuses_connections(address.hostname, address.port or 1935):
        return f"nothing listens at its RTMP address {address.netloc}"
    return None
