"""Settings as users give them: flags > LIVECDN_* environment > a TOML file (--config) > defaults, for every
command; the command line offers only registry backends that exist, and refuses a memory:// island."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from common.runtime.config import ConfigError, EdgeSettings, HostPort, NodeSettings, Settings, load_settings
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
def test_every_command_offers_the_backends_that_exist_and_only_those(command: str) -> None:
    runner = CliRunner()
    help_text = " ".join(runner.invoke(cli, [command, "--help"]).output.split())
    assert "--registry" in help_text and "redis://" in help_text and "consul://host:port" in help_text
    result = runner.invoke(cli, [command, "--registry", "etcd://127.0.0.1:2379"])
    assert result.exit_code == 2, result.output
    assert "unsupported registry URL 'etcd://127.0.0.1:2379'" in result.output
    assert "redis://" in result.output and "consul://" in result.output  # says what to use instead


def test_an_unknown_registry_in_the_environment_is_refused_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVECDN_REGISTRY", "etcd://127.0.0.1:2379")
    result = CliRunner().invoke(cli, ["edge"])
    assert result.exit_code == 2 and "registry (--registry / LIVECDN_REGISTRY)" in result.output


@pytest.mark.parametrize(
    ("command", "who"),
    [(["control"], "the control plane"), (["edge"], "this edge"), (["edge", "--parent-region", "eu"], "this edge")],
)
def test_processes_that_need_others_refuse_memory(
    command: list[str], who: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edge (without a static upstream) or a control plane alone on memory:// would start and never see
    anyone: they stop at once, saying what to set. (They exit before running anything: nothing to clean up.)"""
    monkeypatch.delenv("LIVECDN_REGISTRY", raising=False)
    for args in ([], ["--registry", "memory://"]):
        result = CliRunner().invoke(cli, [*command, *args])
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert f"{who} would never see" in text
        assert "--registry" in text and "LIVECDN_REGISTRY" in text and "`livecdn up`" in text
    monkeypatch.setenv("LIVECDN_REGISTRY", "memory://")
    assert CliRunner().invoke(cli, command).exit_code == 2


@pytest.mark.parametrize("cls", [NodeSettings, ControlSettings])
def test_listen_addresses_from_the_environment(cls: type[Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """As docker compose and Kubernetes give them: LIVECDN_HTTP=HOST:PORT (plain text, not JSON)."""
    monkeypatch.setenv("LIVECDN_HTTP", "0.0.0.0:8083")
    monkeypatch.setenv("LIVECDN_RTMP", "[::]:1937")
    settings = load_settings(cls, {})
    assert settings.http == HostPort("0.0.0.0", 8083)  # type: ignore[attr-defined]
    if cls is NodeSettings:
        assert settings.rtmp == HostPort("::", 1937)  # type: ignore[attr-defined]


def test_secrets_come_from_files_and_never_show_in_errors(tmp_path: Path) -> None:
    from common.runtime.config import OriginSettings, secret

    secret_file = tmp_path / "publish.secret"
    secret_file.write_text("from-a-file\n")
    settings = load_settings(OriginSettings, {"publish_secret_file": str(secret_file)})
    assert secret(settings.publish_secret) == "from-a-file"
    assert "from-a-file" not in repr(settings) and "from-a-file" not in str(settings.model_dump())
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_settings(OriginSettings, {"publish_secret_file": str(tmp_path / "empty")})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(OriginSettings, {"publish_secret_file": str(tmp_path / "missing")})
    with pytest.raises(ConfigError) as refused:
        load_settings(OriginSettings, {"publish_secret": "s3cr3t-value", "claim_ttl": -1})
    assert "s3cr3t-value" not in str(refused.value)


def test_an_origin_needs_someone_to_decide_who_publishes() -> None:
    from common.runtime.config import OriginSettings

    with pytest.raises(ConfigError, match="nothing decides who may publish"):
        load_settings(OriginSettings, {})
    with pytest.raises(ConfigError, match="on_publish needs cluster_secret"):
        load_settings(OriginSettings, {"on_publish": "http://127.0.0.1:9/hook"})
    assert load_settings(OriginSettings, {"open_publish": True}).open_publish
