from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import NodeProcess, make_test_flv


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Which Redis and Consul the registry tests run against here (containers, local binaries, or the in-repo
    Consul test server): never a silent choice."""
    from tests.consul_server import consul_choice
    from tests.redis_server import redis_choice

    return [f"registry tests: redis = {redis_choice()}", f"registry tests: consul = {consul_choice()}"]


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
