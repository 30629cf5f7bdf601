"""`--log-format json`: a real origin writes one JSON object per line, and the publish and play events carry
the stream, the client's address and the node, as a log shipper needs them."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import NodeProcess, publishing, wait_for

pytestmark = pytest.mark.integration


def events(node: NodeProcess) -> list[dict[str, Any]]:
    lines = [line for line in node.log().splitlines() if line.startswith("{")]
    return [json.loads(line) for line in lines]


def test_json_log_lines_for_publish_and_play(tmp_path: Path, test_flv: Path) -> None:
    origin = NodeProcess("origin", ["--log-format", "json", "--node-id", "origin-json"]).start(tmp_path)
    try:
        with publishing(test_flv, f"{origin.rtmp}/live/logged"):
            wait_for(lambda: origin.stream("logged"), 10, "live/logged published")
            with urllib.request.urlopen(f"{origin.http}/live/logged.flv", timeout=5) as response:
                assert response.read(13)[:3] == b"FLV"
            wait_for(lambda: any(e.get("event") == "play" for e in events(origin)), 5, "a play event")
    finally:
        origin.stop()
    banner = ("livecdn ", "  ")  # stdout's banner shares the file with stderr's log here
    other = [line for line in origin.log().splitlines() if line.strip() and not line.startswith(("{", *banner))]
    assert other == []  # every log line is a JSON object (events() parses each one)
    by_event = {e.get("event"): e for e in events(origin)}
    publish, play = by_event["publish"], by_event["play"]
    assert publish["stream"] == play["stream"] == "live/logged"
    assert publish["client"].startswith("127.0.0.1") and play["client"].startswith("127.0.0.1")
    assert publish["node"] == play["node"] == "origin-json"
    assert play["format"] == "HTTP-FLV" and play["level"] == "INFO" and "time" in play
    assert by_event["connect"]["client"] == publish["client"]
