"""The browser side of the control plane: the player page (GET /watch/APP/NAME), the static files of it and
of the status page, and the two JavaScript players, served from the npm packages ./dev installs into
web/node_modules (pinned in web/package-lock.json), never from a public CDN.

The player page asks /v1/route/play itself (with the page's own query: exp, sig, region), so the token
check, region choice and edge load accounting are the router's, exactly as for any other player.
"""

from __future__ import annotations

import os
from pathlib import Path

from aiohttp import web

from common.keys import valid_name

STATIC_DIR = Path(__file__).resolve().parent / "static"
# An editable install (./dev) runs from the checkout, where ./dev put the npm packages; elsewhere
# LIVECDN_WEB_MODULES says where a node_modules directory with them is.
DEFAULT_MODULES = Path(__file__).resolve().parent.parent / "web" / "node_modules"

# Only these files of node_modules are served: the players' browser builds.
VENDOR_FILES = {
    "mpegts.js": "mpegts.js/dist/mpegts.js",
    "hls.js": "hls.js/dist/hls.min.js",
}


def modules_dir() -> Path:
    return Path(os.environ.get("LIVECDN_WEB_MODULES") or DEFAULT_MODULES)


async def watch_page(request: web.Request) -> web.FileResponse:
    if not (valid_name(request.match_info["app"]) and valid_name(request.match_info["name"])):
        raise web.HTTPBadRequest(reason="invalid stream: use letters, digits, '_', '-', '.'")
    return web.FileResponse(STATIC_DIR / "watch.html", headers={"Cache-Control": "no-cache"})


async def vendor_file(request: web.Request) -> web.FileResponse:
    relative = VENDOR_FILES.get(request.match_info["file"])
    if relative is None:
        raise web.HTTPNotFound()
    path = modules_dir() / relative
    if not path.is_file():
        raise web.HTTPServiceUnavailable(
            reason=f"{path} is missing: run ./dev setup (npm ci in web/) or set LIVECDN_WEB_MODULES"
        )
    return web.FileResponse(path, headers={"Content-Type": "text/javascript", "Cache-Control": "max-age=3600"})


def add_web_routes(app: web.Application) -> None:
    app.router.add_get("/watch/{app}/{name}", watch_page)
    app.router.add_get("/vendor/{file}", vendor_file)
    app.router.add_static("/static/", STATIC_DIR)
