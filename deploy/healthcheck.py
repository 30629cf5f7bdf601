"""The container health check: GET /healthz on the port of LIVECDN_HTTP (every role sets it), exit 0 or 1.

Standard library only, so it runs in the slim image without importing livecdn (a probe must be cheap)."""

from __future__ import annotations

import os
import sys
import urllib.request


def url_from_env(environ: dict[str, str] | os._Environ[str]) -> str:
    override = environ.get("LIVECDN_HEALTHCHECK_URL")
    if override:
        return override
    listen = environ.get("LIVECDN_HTTP", "0.0.0.0:8080")
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):  # a wildcard bind answers on loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def main() -> int:
    url = url_from_env(os.environ)
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
