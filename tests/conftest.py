from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import NodeProcess, make_test_flv


@pytest.fixture(scope="session")
def test_flv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_flv(tmp_path_factory.mktemp("media") / "test.flv")


@pytest.fixture(scope="session")
def cbr_flv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1.5 Mbit/s constant bitrate: fills a stalled viewer's buffers in seconds."""
    return make_test_flv(tmp_path_factory.mktemp("media") / "cbr.flv", bitrate_kbps=1500, cbr=True)


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[NodeProcess]:
    node = NodeProcess("origin").start(tmp_path)
    yield node
    node.stop()
