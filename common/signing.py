"""Signed, expiring access to one stream: publish URLs, play tokens, and the pulls edges make.

A token is ``exp=<unix seconds>&sig=<HMAC-SHA256, base64url>`` appended to the stream's URL; the MAC
covers the action, the stream and the expiry, so a token for one stream or action is worth nothing for
another. Checked in constant time. Pure functions: the caller passes the clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Final
from urllib.parse import parse_qs

from common.keys import StreamKey

PUBLISH: Final = "publish"
PLAY: Final = "play"
PULL: Final = "pull"  # an edge pulling from its upstream, signed with the cluster secret
ACTIONS: Final = (PUBLISH, PLAY, PULL)
MAX_QUERY: Final = 4096  # longer query strings are not parsed: nobody signs that much


def _mac(secret: str, action: str, key: StreamKey, expires: int) -> str:
    message = f"livecdn/1\n{action}\n{key}\n{expires}".encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(secret: str, action: str, key: StreamKey, expires: int) -> str:
    """The query string (no leading '?') that grants ``action`` on ``key`` until ``expires``."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}: {', '.join(ACTIONS)}")
    return f"exp={expires}&sig={_mac(secret, action, key, expires)}"


def refusal(secret: str, action: str, key: StreamKey, query: str, now: float) -> str | None:
    """Why ``query`` does not grant ``action`` on ``key`` at ``now``; None when it does."""
    if len(query) > MAX_QUERY:
        return "query string too long"
    try:
        params = parse_qs(query, keep_blank_values=True, max_num_fields=32)
    except ValueError:
        return "malformed query string"
    expires_text, sig = params.get("exp", [""])[-1], params.get("sig", [""])[-1]
    if not expires_text or not sig:
        return "no signature (exp=…&sig=…)"
    if not expires_text.isdigit() or len(expires_text) > 12:
        return "malformed expiry"
    expires = int(expires_text)
    if not hmac.compare_digest(sig.encode(), _mac(secret, action, key, expires).encode()):
        return "bad signature"
    if expires < now:
        return "signature expired"
    return None


def without_signature(query: str) -> str:
    """``query`` minus exp/sig: what may travel on (a viewer's token is never forwarded upstream)."""
    kept = [part for part in query.split("&") if part and part.partition("=")[0] not in ("exp", "sig")]
    return "&".join(kept)
