"""LL-HLS on a cold edge, with real processes: ffmpeg publishes to an origin; ffmpeg plays the edge's
playlist and decodes video and audio; the playlist has the LL-HLS tags; a blocking reload returns when
its part is built. Prints the figures docs/BENCHMARKS.md records."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import m3u8
import pytest

from tests.helpers import NodeProcess, play_and_decode, publishing, wait_for

pytestmark = pytest.mark.integration


def fetch(url: str, timeout: float = 10) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


@pytest.fixture
def edge(origin: NodeProcess, tmp_path: Path) -> Iterator[NodeProcess]:
    node = NodeProcess(
        "edge", ["--upstream", f"{origin.rtmp}/live"], {"LIVECDN_IDLE_GRACE": "1", "LIVECDN_HLS_PART_DURATION": "0.5"}
    ).start(tmp_path)
    yield node
    node.stop()


def test_llhls_on_a_cold_edge(origin: NodeProcess, edge: NodeProcess, test_flv: Path) -> None:
    with publishing(test_flv, f"{origin.rtmp}/live/x"):
        wait_for(lambda: (s := origin.stream("x")) and s["packets_in"] > 60, 15, "x live on the origin")
        assert edge.stream("x") is None  # cold: nothing pulled yet

        # Time to the first playable part: playlist (starts the pull), init segment, first part listed.
        t0 = time.monotonic()
        status, body, headers = fetch(f"{edge.http}/live/x.m3u8")
        assert status == 200, body
        assert headers["Access-Control-Allow-Origin"] == "*"
        playlist = m3u8.loads(body.decode())
        first = playlist.segments[0].parts[0]  # parts of the open segment come as a segment without a URI
        status, init, _ = fetch(f"{edge.http}/live/x/init.mp4")
        assert status == 200 and init[4:8] == b"ftyp"
        status, part, _ = fetch(f"{edge.http}/live/{first.uri}")
        assert status == 200 and part[4:8] == b"moof"
        first_part_s = time.monotonic() - t0

        # The LL-HLS tags, parsed by a third-party parser.
        assert playlist.server_control.can_block_reload == "YES"
        assert playlist.server_control.part_hold_back == pytest.approx(1.5)
        assert playlist.part_inf.part_target == pytest.approx(0.5)
        assert playlist.preload_hint.hint_type == "PART"
        assert playlist.segment_map[0].uri == "x/init.mp4"
        assert playlist.target_duration >= 1

        # A blocking reload for the part after the hinted one returns when that part exists.
        msn, hinted = _hinted_part(playlist.preload_hint.uri)
        t1 = time.monotonic()
        status, body, _ = fetch(f"{edge.http}/live/x.m3u8?_HLS_msn={msn}&_HLS_part={hinted}")
        blocked_s = time.monotonic() - t1
        assert status == 200
        reloaded = m3u8.loads(body.decode())
        uris = [p.uri for s in reloaded.segments for p in s.parts]
        # the hinted part, or (a key frame came first) the segment it would have ended, complete
        assert f"x/seg{msn}.{hinted}.m4s" in uris or f"x/seg{msn}.m4s" in [s.uri for s in reloaded.segments]
        assert blocked_s < 3 * playlist.target_duration

        # ffmpeg plays it as HLS and decodes video and audio.
        result = play_and_decode(f"{edge.http}/live/x.m3u8", video_frames=40, timeout=30)
        assert result.returncode == 0, result.output
        assert result.video_frames == 40 and result.audio_frames > 20, result

        stats = edge.stats()
        assert stats["node"]["viewers_hls"] >= 1 and edge.stream("x")["viewers_hls"] >= 1  # type: ignore[index]
        metrics = fetch(f"{edge.http}/metrics")[1].decode()
        assert "livecdn_hls_parts_served" in metrics and "livecdn_viewers_hls" in metrics
        print(
            f"\nLL-HLS cold edge: first playable part {first_part_s:.3f}s; blocking reload held {blocked_s:.3f}s; "
            f"ffmpeg decoded 40 frames in {result.seconds:.2f}s"
        )
        # Viewers that stop fetching are gone after three target durations; then the idle pull stops.
        wait_for(lambda: edge.stream("x") is None, 15, "the edge to let the idle HLS stream go")


def _hinted_part(uri: str) -> tuple[int, int]:
    name = uri.split("?", 1)[0].removeprefix("x/seg").removesuffix(".m4s")
    msn, part = name.split(".")
    return int(msn), int(part)
