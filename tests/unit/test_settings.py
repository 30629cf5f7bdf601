"""Settings as users give them: flags > LIVECDN_* environment > a TOML file (--config) > defaults, for every
command; and the command line offers only registry backends that exist."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from common.runtime.config import EdgeSettings, HostPort, NodeSettings, Settings, load_settings
from control.settings import ControlSettings
from livecdn.cli import cli


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("cls", [NodeSettings, EdgeSettings, ControlSettings])
def test_every_settings_class_reads_the_toml_file(cls: type[Settings], tmp_path: Path) -> None:
    toml = write_toml(tmp_path / "livecdn.toml", 'registry = "redis://127.0.0.1:6390/2"\nlog_level = "debug"\n')
    settings = load_settings(cls, {}, toml)
    assert settings.registry == "redis://127.0.0.1:6390/2"
    assert settings.log_level == "debug"


def test_origin_settings_from_toml_with_env_and_flags_on_top(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = write_toml(
        tmp_path / "origin.toml",
        'node_id = "from-file"\nregion = "file-region"\nrtmp = "127.0.0.1:1999"\nclaim_ttl = 4\n',
    )
    monkeypatch.setenv("LIVECDN_REGION", "env-region")
    settings = load_settings(NodeSettings, {"node_id": "from-flag"}, toml)
    assert settings.node_id == "from-flag"  # flag beats file
    assert settings.region == "env-region"  # env beats file
    assert settings.rtmp == HostPort("127.0.0.1", 1999) and settings.claim_ttl == 4  # the file beats defaults


def test_control_settings_from_toml(tmp_path: Path) -> None:
    toml = write_toml(tmp_path / "control.toml", 'http = "127.0.0.1:9111"\nepsilon = 0.5\n')
    settings = load_settings(ControlSettings, {}, toml)
    assert settings.http == HostPort("127.0.0.1", 9111) and settings.epsilon == 0.5


def test_a_bad_value_in_the_file_names_the_setting(tmp_path: Path) -> None:
    toml = write_toml(tmp_path / "bad.toml", "claim_ttl = -1\n")
    result = CliRunner().invoke(cli, ["origin", "--config", str(toml)])
    assert result.exit_code == 2
    assert "claim_ttl (--claim-ttl / LIVECDN_CLAIM_TTL)" in result.output


@pytest.mark.parametrize("command", ["origin", "edge", "control", "up"])
def test_consul_is_not_offered_until_a_backend_exists(command: str) -> None:
    runner = CliRunner()
    help_text = runner.invoke(cli, [command, "--help"]).output
    assert "--registry" in help_text and "consul" not in help_text.lower()
    result = runner.invoke(cli, [command, "--registry", "consul://127.0.0.1:8500"])
    assert result.exit_code == 2, result.output
    assert "unsupported registry URL 'consul://127.0.0.1:8500'" in result.output
    assert "redis://" in result.output  # says what to use instead


def test_consul_in_the_environment_is_refused_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVECDN_REGISTRY", "consul://127.0.0.1:8500")
    result = CliRunner().invoke(cli, ["edge"])
    assert result.exit_code == 2 and "registry (--registry / LIVECDN_REGISTRY)" in result.output
