"""An edge whose static upstream is a third-party RTMP server (nginx-rtmp), not one of our origins."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import NodeProcess, play_and_decode, publishing, wait_for
from tests.nginx_rtmp import NginxRtmp, nginx_rtmp_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(nginx_rtmp_available() is not None, reason=str(nginx_rtmp_available())),
]


def test_edge_pulls_from_nginx_rtmp(test_flv: Path, tmp_path: Path) -> None:
    nginx = NginxRtmp(tmp_path / "nginx").start()
    edge = NodeProcess("edge", ["--upstream", nginx.url, "--node-id", "edge-nginx"]).start(tmp_path)
    try:
        with publishing(test_flv, f"{nginx.url}/thirdparty"):
            wait_for(lambda: (tmp_path / "nginx" / "error.log").read_text().count("publish") > 0, 10, "nginx publish")
            players = [play_and_decode(f"{edge.rtmp}/live/thirdparty", video_frames=30) for _ in range(2)]
            flv = play_and_decode(f"{edge.http}/live/thirdparty.flv", video_frames=30)
            for result in [*players, flv]:
                assert result.returncode == 0, result.output
                assert result.video_frames == 30 and result.audio_frames > 5
            stream = edge.stream("thirdparty")
            assert stream is not None and stream["upstream"] == f"{nginx.url}/thirdparty"
    finally:
        edge.stop()
        nginx.stop()
