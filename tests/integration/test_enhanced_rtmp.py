"""Enhanced RTMP end to end: HEVC (and AV1) published with FourCC tags arrive byte-identical at an edge over
RTMP and HTTP-FLV, and HEVC as `hvc1` in LL-HLS. Fixtures made here with PyAV (Debian's ffmpeg 5.1 cannot
write Enhanced FLV), sent by loadtest's publisher; nothing is transcoded anywhere."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.rtmp.events import MediaReceived
from common.serving.client import RtmpClient
from common.system import stop_process
from loadtest.flvfile import TAG_VIDEO, FlvReader, read_flv
from tests.helpers import ROOT, NodeProcess, wait_for

av = pytest.importorskip("av", reason="PyAV (a test dependency) writes the Enhanced FLV fixtures")

pytestmark = pytest.mark.integration


def enhanced_flv(path: Path, codec: str) -> Path:
    """2 s of a test pattern in an Enhanced FLV (FourCC video tags), 1 s GOP, AAC audio."""
    video_in = av.open("testsrc2=size=320x240:rate=25:duration=2", format="lavfi")
    audio_in = av.open("sine=frequency=440:sample_rate=48000:duration=2", format="lavfi")
    out = av.open(str(path), "w", format="flv")
    video = out.add_stream(codec, rate=25)
    video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
    video.options = {"x265-params": "keyint=25:min-keyint=25:log-level=error"} if codec == "libx265" else {"g": "25"}
    audio = out.add_stream("aac", rate=48000)
    for frame in video_in.decode(video=0):
        frame = frame.reformat(format="yuv420p")
        frame.pts = None
        out.mux(video.encode(frame))
    out.mux(video.encode())
    for frame in audio_in.decode(audio=0):
        frame.pts = None
        out.mux(audio.encode(frame))
    out.mux(audio.encode())
    out.close()
    return path


def digests(payloads: list[bytes]) -> set[str]:
    return {hashlib.sha256(p).hexdigest() for p in payloads}


@pytest.fixture(scope="module", params=["libx265", "libsvtav1"], ids=["hevc", "av1"])
def published(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, NodeProcess, set[str], bytes]]:
    codec = str(request.param)
    workdir = tmp_path_factory.mktemp(codec)
    flv = enhanced_flv(workdir / "enhanced.flv", codec)
    video = [tag.payload for tag in read_flv(flv) if tag.tag_type == TAG_VIDEO]
    assert video[0][0] & 0x80, "the fixture must carry Enhanced RTMP video tags (the ExHeader bit)"
    fourcc = video[0][1:5]
    origin = NodeProcess("origin").start(workdir)
    edge = NodeProcess("edge", ["--upstream", f"{origin.rtmp}/live"]).start(workdir)
    publisher = subprocess.Popen(
        [sys.executable, "-m", "loadtest", "publish", str(flv), f"{origin.rtmp}/live/enhanced"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: (s := origin.stream("enhanced")) and s["has_video_header"], 15, "the publish")
        yield codec, edge, digests(video), fourcc
    finally:
        stop_process(publisher)
        edge.stop()
        origin.stop()


def test_rtmp_viewers_at_the_edge_get_the_very_same_video_tags(
    published: tuple[str, NodeProcess, set[str], bytes],
) -> None:
    codec, edge, sent, fourcc = published
    received: list[bytes] = []

    async def watch() -> None:
        client = await RtmpClient.connect(f"{edge.rtmp}/live/enhanced")
        await client.play(
            lambda e: received.append(e.payload) if isinstance(e, MediaReceived) and e.type_id == 9 else None
        )
        await asyncio.sleep(3)
        client.close()

    asyncio.run(watch())
    assert len(received) > 40, len(received)
    assert received[0][1:5] == fourcc, (codec, received[0][:8])  # the sequence start first, FourCC intact
    assert digests(received) <= sent, "a video tag changed on its way through origin and edge"


def test_http_flv_viewers_at_the_edge_get_the_very_same_video_tags(
    published: tuple[str, NodeProcess, set[str], bytes],
) -> None:
    _, edge, sent, fourcc = published
    reader = FlvReader()
    tags: list[bytes] = []
    with urllib.request.urlopen(f"{edge.http}/live/enhanced.flv", timeout=10) as response:
        while len(tags) < 60:
            chunk = response.read(16384)
            if not chunk:
                break
            tags += [tag.payload for tag in reader.feed(chunk) if tag.tag_type == TAG_VIDEO]  # complete tags only
    assert len(tags) >= 60 and tags[0][1:5] == fourcc
    assert digests(tags) <= sent


def test_hevc_is_hvc1_in_ll_hls(published: tuple[str, NodeProcess, set[str], bytes], tmp_path: Path) -> None:
    codec, edge, _, _ = published
    if codec != "libx265":
        pytest.skip("LL-HLS carries H.264 and HEVC here; AV1 is served over RTMP and HTTP-FLV only")
    with urllib.request.urlopen(f"{edge.http}/live/enhanced.m3u8", timeout=15) as response:
        playlist = response.read().decode()
    assert "#EXT-X-PART:" in playlist
    with urllib.request.urlopen(f"{edge.http}/live/enhanced/init.mp4", timeout=10) as response:
        init = response.read()
    assert b"hvc1" in init and b"hvcC" in init
    segment = next(line for line in playlist.splitlines() if line.endswith(".m4s") and "." not in line[:-4])
    with urllib.request.urlopen(f"{edge.http}/live/{segment}", timeout=10) as response:
        (tmp_path / "hevc.mp4").write_bytes(init + response.read())
    with av.open(str(tmp_path / "hevc.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "hevc"
        frames = sum(1 for _ in container.decode(stream))
    assert frames > 10, frames
