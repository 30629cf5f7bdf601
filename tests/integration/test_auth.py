"""Who may publish and who may watch, driven as users do: ffmpeg publishing signed URLs (made by `livecdn
sign`), an on_publish webhook, viewers with and without play tokens over RTMP and HTTP-FLV, edges
pulling with the cluster secret, and the admin token."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from common.system import free_port
from tests.helpers import NodeProcess, http_json, play_and_decode, publishing, rtmp_answer, run_livecdn, wait_for
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

PUBLISH_SECRET = "publish-secret-for-tests-7f3a"
PLAY_SECRET = "play-secret-for-tests-91c2"
CLUSTER_SECRET = "cluster-secret-for-tests-5d8e"
ADMIN_TOKEN = "admin-token-for-tests-20b4"


def signed(stream: str, *, action: str = "publish", ttl: int = 600, secret: str = PUBLISH_SECRET) -> str:
    result = run_livecdn("sign", "--secret", secret, "--stream", stream, "--ttl", str(ttl), "--action", action)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def publish_refused(url: str) -> str:
    """What the origin answered a publish it refused (ffmpeg exits at once)."""
    return rtmp_answer(url, "publish")


def play_answer(url: str) -> str:
    return rtmp_answer(url, "play")


def http_status(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> int:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    """An origin that needs signed publish URLs and serves only edges (and play-token holders), and an edge
    that needs play tokens and pulls with the cluster secret."""
    workdir = tmp_path_factory.mktemp("auth")
    secrets = {
        "LIVECDN_OPEN_PUBLISH": "false",
        "LIVECDN_PUBLISH_SECRET": PUBLISH_SECRET,
        "LIVECDN_PLAY_SECRET": PLAY_SECRET,
        "LIVECDN_CLUSTER_SECRET": CLUSTER_SECRET,
        "LIVECDN_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    origin = NodeProcess("origin", env=secrets).start(workdir)
    edge_env = {k: v for k, v in secrets.items() if k != "LIVECDN_PUBLISH_SECRET"}
    edge = NodeProcess("edge", ["--upstream", f"{origin.rtmp}/live"], edge_env).start(workdir)
    yield origin, edge
    edge.stop()
    origin.stop()


def test_a_signed_publish_url_is_accepted_and_a_bad_one_refused(
    secured: tuple[NodeProcess, NodeProcess], test_flv: Path
) -> None:
    origin, _ = secured
    base = f"{origin.rtmp}/live/signed"
    assert publish_refused(base) == "NetStream.Publish.BadName"  # no signature
    assert publish_refused(f"{base}?{signed('live/other')}") == "NetStream.Publish.BadName"  # another stream's
    assert publish_refused(f"{base}?{signed('live/signed', secret='wrong')}") == "NetStream.Publish.BadName"
    expired = signed("live/signed", ttl=1)
    time.sleep(2.1)
    assert publish_refused(f"{base}?{expired}") == "NetStream.Publish.BadName"
    assert origin.stream("signed") is None  # nothing was claimed or kept for any of them
    assert "signature expired" in origin.log() and PUBLISH_SECRET not in origin.log()
    with publishing(test_flv, f"{base}?{signed('live/signed')}"):  # real ffmpeg, the URL as a script makes it
        wait_for(lambda: (s := origin.stream("signed")) and s["publisher"], 10, "the signed publish")


def test_play_tokens_for_viewers_and_the_cluster_secret_for_edges(
    secured: tuple[NodeProcess, NodeProcess], test_flv: Path
) -> None:
    origin, edge = secured
    with publishing(test_flv, f"{origin.rtmp}/live/watched?{signed('live/watched')}"):
        wait_for(lambda: origin.stream("watched"), 10, "the publish")
        # Without a token: refused at the edge (RTMP and HTTP-FLV alike) and at the origin.
        assert play_answer(f"{edge.rtmp}/live/watched") == "NetStream.Play.Failed"
        assert http_status(f"{edge.http}/live/watched.flv") == 403
        assert play_answer(f"{origin.rtmp}/live/watched") == "NetStream.Play.Failed"
        assert http_status(f"{origin.http}/live/watched.flv") == 403
        # A token for another stream, or a publish URL, is no play token.
        assert (
            play_answer(f"{edge.rtmp}/live/watched?{signed('live/other', action='play', secret=PLAY_SECRET)}")
            != "accepted"
        )
        assert play_answer(f"{edge.rtmp}/live/watched?{signed('live/watched')}") != "accepted"
        # With a play token: ffmpeg plays and decodes from the edge, which pulled with the cluster secret.
        token = signed("live/watched", action="play", secret=PLAY_SECRET)
        for url in (f"{edge.rtmp}/live/watched?{token}", f"{edge.http}/live/watched.flv?{token}"):
            result = play_and_decode(url, video_frames=10)
            assert result.returncode == 0 and result.video_frames == 10, (url, result.output[-1000:])
        assert (edge.stream("watched") or {}).get("upstream_connects", 0) >= 1
    assert PLAY_SECRET not in edge.log() and CLUSTER_SECRET not in edge.log() + origin.log()


def test_the_admin_api_needs_the_admin_token(secured: tuple[NodeProcess, NodeProcess], test_flv: Path) -> None:
    origin, _ = secured
    kick = f"{origin.http}/v1/streams/live/kicked/kick"
    with publishing(test_flv, f"{origin.rtmp}/live/kicked?{signed('live/kicked')}", loop=True) as proc:
        wait_for(lambda: (s := origin.stream("kicked")) and s["publisher"], 10, "the publish")
        assert http_status(kick, method="POST") == 401
        assert http_status(kick, {"Authorization": "Bearer not-the-token"}, "POST") == 401
        assert http_status(kick, {"Authorization": f"Bearer {ADMIN_TOKEN}"}, "POST") == 200
        wait_for(lambda: proc.poll() is not None, 10, "the publisher to be disconnected")
    assert (
        http_status(f"{origin.http}/v1/streams/live/nothing/kick", {"Authorization": f"Bearer {ADMIN_TOKEN}"}, "POST")
        == 404
    )


def test_without_an_admin_token_the_admin_api_is_closed(origin: NodeProcess) -> None:
    assert http_status(f"{origin.http}/v1/drain", method="POST") == 403
    assert not origin.stats()["node"]["draining"]
    assert "open_publish: ANYONE" in origin.log()  # open publishing was asked for, and is said out loud


def test_an_origin_with_nothing_deciding_who_publishes_refuses_to_start() -> None:
    result = run_livecdn("origin", "--rtmp", "127.0.0.1:0", "--http", "127.0.0.1:0")
    assert result.returncode == 2
    assert "publish_secret" in result.stderr and "open_publish" in result.stderr


class Webhook:
    """An on_publish endpoint on loopback: records each request, answers with ``status``."""

    def __init__(self, status: int = 204) -> None:
        self.status = status
        self.requests: list[tuple[dict[str, str], bytes]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                hook.requests.append((dict(self.headers), body))
                self.send_response(hook.status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/on_publish"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_on_publish_webhook_decides_and_its_requests_are_signed(test_flv: Path, tmp_path: Path) -> None:
    hook = Webhook()
    env = {"LIVECDN_OPEN_PUBLISH": "false", "LIVECDN_ON_PUBLISH": hook.url, "LIVECDN_CLUSTER_SECRET": CLUSTER_SECRET}
    origin = NodeProcess("origin", env=env).start(tmp_path)
    try:
        with publishing(test_flv, f"{origin.rtmp}/live/hooked?key=abc"):
            wait_for(lambda: (s := origin.stream("hooked")) and s["publisher"], 10, "the allowed publish")
        headers, body = hook.requests[-1]
        request = json.loads(body)
        assert request["stream"] == "live/hooked" and request["query"] == "key=abc"
        assert request["client"] == "127.0.0.1" and request["action"] == "publish"
        timestamp = headers["X-Livecdn-Timestamp"]
        expected = hmac.new(CLUSTER_SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        assert headers["X-Livecdn-Signature"] == f"sha256={expected}"
        assert abs(int(timestamp) - time.time()) < 30

        hook.status = 403
        assert publish_refused(f"{origin.rtmp}/live/denied") == "NetStream.Publish.BadName"
        hook.close()  # unreachable: fails closed
        assert publish_refused(f"{origin.rtmp}/live/unreachable") == "NetStream.Publish.BadName"
        assert origin.stream("denied") is None and origin.stream("unreachable") is None
    finally:
        origin.stop()
        hook.close()


def test_no_secret_leaks_into_stats_banner_or_errors(secured: tuple[NodeProcess, NodeProcess]) -> None:
    origin, edge = secured
    shown = json.dumps([origin.stats(), edge.stats()]) + origin.log() + edge.log()
    for secret in (PUBLISH_SECRET, PLAY_SECRET, CLUSTER_SECRET, ADMIN_TOKEN):
        assert secret not in shown
    # A start-up error while secrets are set does not echo them either.
    port = free_port()
    bad = run_livecdn("edge", "--rtmp", f"127.0.0.1:{port}", "--play-secret", PLAY_SECRET, "--region", "no spaces!")
    assert bad.returncode == 2 and "region" in bad.stderr and PLAY_SECRET not in bad.stderr + bad.stdout


def test_no_password_or_secret_shows_anywhere_a_user_or_operator_looks(tmp_path: Path, test_flv: Path) -> None:
    password = "redis-password-for-tests-4e1f"
    with RedisServer(password=password) as redis:
        secrets = {
            "LIVECDN_OPEN_PUBLISH": "false",
            "LIVECDN_PUBLISH_SECRET": PUBLISH_SECRET,
            "LIVECDN_CLUSTER_SECRET": CLUSTER_SECRET,
            "LIVECDN_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        registry = ["--registry", redis.url]
        origin = NodeProcess("origin", registry, secrets).start(tmp_path)
        edge = NodeProcess("edge", registry, {**secrets, "LIVECDN_PLAY_SECRET": PLAY_SECRET}).start(tmp_path)
        control = NodeProcess("control", registry).start(tmp_path)
        try:
            with publishing(test_flv, f"{origin.rtmp}/live/quiet?{signed('live/quiet')}"):
                wait_for(lambda: http_json(control.http + "/v1/streams")["streams"], 10, "the claim")
                pages = [
                    urllib.request.urlopen(control.http + "/", timeout=5).read().decode(),
                    json.dumps(http_json(control.http + "/v1/nodes")),
                    json.dumps(http_json(control.http + "/v1/streams")),
                    json.dumps([origin.stats(), edge.stats()]),
                    urllib.request.urlopen(origin.http + "/metrics", timeout=5).read().decode(),
                ]
                assert "***" in pages[0]  # the status page shows the registry, redacted
                # A player given the control plane's /play URL with its token lands on an edge and plays.
                token = signed("live/quiet", action="play", secret=PLAY_SECRET)
                played = play_and_decode(f"{control.http}/play/live/quiet?{token}", video_frames=10)
                assert played.returncode == 0 and played.video_frames == 10, played.output[-1000:]
                refused = play_and_decode(f"{control.http}/play/live/quiet", video_frames=10, timeout=10)
                assert refused.video_frames == 0
        finally:
            for node in (control, edge, origin):
                node.stop()
        shown = "".join(pages) + origin.log() + edge.log() + control.log()
        for secret in (password, PUBLISH_SECRET, PLAY_SECRET, CLUSTER_SECRET, ADMIN_TOKEN):
            assert secret not in shown, secret
