"""The origin as users drive it: ffmpeg publishes, ffmpeg players decode, misbehaving peers are refused."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from common.media.flv import is_video_keyframe
from common.rtmp.events import MediaReceived
from common.serving.client import RtmpClient
from tests.helpers import (
    LOW_LATENCY_INPUT,
    NodeProcess,
    ffmpeg_path,
    finish_play,
    play_and_decode,
    publishing,
    rtmp_answer,
    run_livecdn,
    start_play,
    wait_for,
)

pytestmark = pytest.mark.integration


def wait_live(node: NodeProcess, name: str, min_packets: int = 1) -> None:
    wait_for(
        lambda: (s := node.stream(name)) and s["publisher"] and s["packets_in"] >= min_packets,
        15,
        f"{name} to be live on {node.role}",
    )


def test_two_ffmpeg_players_decode_video_and_audio(origin: NodeProcess, test_flv: Path) -> None:
    with publishing(test_flv, f"{origin.rtmp}/live/cam?key=abc") as publisher:
        wait_live(origin, "cam")  # the ?key=... query is not part of the name
        players = [start_play(f"{origin.rtmp}/live/cam", video_frames=60) for _ in range(2)]
        wait_for(lambda: origin.stream("cam")["viewers"] == 2, 10, "two viewers")
        results = [finish_play(p, timeout=20) for p in players]
        assert publisher.poll() is None, "the publisher must keep running"
    for result in results:
        assert result.returncode == 0, result.output
        assert result.video_frames == 60
        assert result.audio_frames > 20
    stats = origin.stats()
    assert stats["node"]["role"] == "origin"


def test_late_joiner_decodes_first_frame_within_one_second(origin: NodeProcess, test_flv: Path) -> None:
    with publishing(test_flv, f"{origin.rtmp}/live/late"):
        wait_live(origin, "late")
        time.sleep(2.5)  # join in the middle of a GOP
        url = f"{origin.rtmp}/live/late"
        result = play_and_decode(url, video_frames=1, timeout=10, input_args=LOW_LATENCY_INPUT)
        assert result.returncode == 0, result.output
        assert result.video_frames == 1
        # Wall time of the whole ffmpeg process: start-up, handshake, play, decode. The GOP cache sends the
        # last key frame at once; a default ffmpeg adds its own probing (it waits for ~20 frames).
        assert result.seconds < 1.0, f"first frame took {result.seconds:.2f}s"

        first_frame = asyncio.run(_first_keyframe_seconds(f"{origin.rtmp}/live/late"))
        assert first_frame < 0.5, f"protocol-level first key frame took {first_frame:.3f}s"
    print(f"\nlate joiner: ffmpeg first decoded frame {result.seconds:.3f}s, RTMP first key frame {first_frame:.3f}s")


async def _first_keyframe_seconds(url: str) -> float:
    t0 = time.monotonic()
    got = asyncio.get_running_loop().create_future()

    def on_media(event: MediaReceived) -> None:
        if event.type_id == 9 and is_video_keyframe(event.payload) and event.payload[1] == 1 and not got.done():
            got.set_result(time.monotonic() - t0)

    client = await RtmpClient.connect(url)
    try:
        await client.play(on_media)
        return float(await asyncio.wait_for(got, 5))
    finally:
        client.close()


def test_second_publisher_is_refused_and_first_goes_on(origin: NodeProcess, test_flv: Path) -> None:
    url = f"{origin.rtmp}/live/dup"
    with publishing(test_flv, url) as first:
        wait_live(origin, "dup")
        bytes_before = origin.stream("dup")["bytes_in"]
        with publishing(test_flv, url, loop=False) as second:
            assert second.wait(15) != 0, "a second publisher of a live stream must be refused"
            output = second.stdout.read() if second.stdout else ""
        assert "BadName" in output or "already" in output, output
        assert first.poll() is None
        wait_for(lambda: origin.stream("dup")["bytes_in"] > bytes_before, 5, "first publisher still flowing")
        result = play_and_decode(url, video_frames=10)
        assert result.returncode == 0 and result.video_frames == 10, result.output
    assert "refused publish of live/dup" in origin.log()


def test_playing_a_missing_stream_fails_cleanly(origin: NodeProcess) -> None:
    t0 = time.monotonic()
    result = play_and_decode(f"{origin.rtmp}/live/nobody", video_frames=1, timeout=15)
    assert result.returncode != 0
    assert time.monotonic() - t0 < 5
    assert "StreamNotFound" in result.output or "not live" in result.output, result.output

    assert rtmp_answer(f"{origin.rtmp}/live/nobody") == "NetStream.Play.StreamNotFound"
    assert origin.stats()["streams"] == []  # a failed play leaves nothing behind


def test_garbage_closes_only_that_connection(origin: NodeProcess, test_flv: Path) -> None:
    with publishing(test_flv, f"{origin.rtmp}/live/safe"):
        wait_live(origin, "safe")
        for junk in (b"\x06" + os.urandom(1536), b"\x03" + os.urandom(1536) + os.urandom(1536) + os.urandom(4000)):
            with socket.create_connection(("127.0.0.1", origin.rtmp_port), timeout=5) as sock:
                sock.sendall(junk)
                sock.settimeout(5)
                received = b""
                while chunk := sock.recv(65536):  # the node closes the connection
                    received += chunk
        wait_for(lambda: origin.stats()["node"]["protocol_errors"] >= 2, 5, "protocol errors counted")
        result = play_and_decode(f"{origin.rtmp}/live/safe", video_frames=5)
        assert result.returncode == 0 and result.video_frames == 5
    assert "RTMP protocol error" in origin.log()


def test_silent_connection_is_closed_after_the_handshake_timeout(tmp_path: Path) -> None:
    node = NodeProcess("origin", env={"LIVECDN_HANDSHAKE_TIMEOUT": "0.5"}).start(tmp_path)
    try:
        with socket.create_connection(("127.0.0.1", node.rtmp_port), timeout=5) as sock:
            t0 = time.monotonic()
            assert sock.recv(10) == b""
            assert time.monotonic() - t0 < 3
    finally:
        node.stop()
    assert "no connect within" in node.log()


def test_bad_settings_give_a_clear_error() -> None:
    result = run_livecdn("origin", "--rtmp", "nonsense", "--http", "127.0.0.1:1")
    assert result.returncode == 2
    assert "--rtmp / LIVECDN_RTMP" in result.stderr and "HOST:PORT" in result.stderr


def test_ffmpeg_binary_is_usable() -> None:
    out = subprocess.run([ffmpeg_path(), "-hide_banner", "-protocols"], capture_output=True, text=True, timeout=30)
    assert "rtmp" in out.stdout
