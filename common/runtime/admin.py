"""The admin API: state-changing endpoints, each behind the admin token (a bearer token).

Without an admin token configured the endpoints answer 403: a node is never open to strangers by
default. SIGTERM still drains a node whatever the token.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def require_admin(token: str | None, handler: Handler) -> Handler:
    """``handler`` behind ``Authorization: Bearer <token>``, compared in constant time."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        if token is None:
            return web.json_response(
                {"error": "the admin API is disabled: set admin_token (LIVECDN_ADMIN_TOKEN) to use it"}, status=403
            )
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            return web.json_response(
                {"error": "admin token required: Authorization: Bearer <admin_token>"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="livecdn admin"'},
            )
        return await handler(request)

    return guarded
