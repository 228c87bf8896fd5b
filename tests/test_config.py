"""Settings: defaults, TOML file, MSGBATCH_* env vars and flags, in that order of precedence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from msgbatch.config import ConfigError, load_settings, parse_duration


def test_defaults() -> None:
    s = load_settings(None, env={})
    assert (s.host, s.port, s.database) == ("127.0.0.1", 8787, "msgbatch.db")
    assert s.expiry_seconds == 86400 and s.retention_seconds == 29 * 86400
    assert s.open_auth and s.worker


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("90s", 90), ("15m", 900), ("24h", 86400), ("29d", 29 * 86400), ("2.5", 2.5), (3, 3.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text, name="x") == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["soon", "-1s", "1w", True, None])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ConfigError, match="x:"):
        parse_duration(bad, name="x")


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "msgbatch.toml"
    config.write_text(
        'port = 9000\nexpiry = "2h"\nretention = "3d"\ndatabase = "from-file.db"\n'
        '[workspaces]\nresearch = ["k1", "env:RESEARCH_KEY"]\neval = "k3"\n'
    )
    s = load_settings(str(config), env={"RESEARCH_KEY": "k2", "MSGBATCH_PORT": "9100"}, database="flag.db")
    assert s.port == 9100  # env beats file
    assert s.database == "flag.db"  # flag beats file
    assert s.expiry_seconds == 7200 and s.retention_seconds == 3 * 86400
    assert s.api_keys == {"k1": "research", "k2": "research", "k3": "eval"}
    assert not s.open_auth


def test_config_file_from_env(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("concurrency = 8\n")
    assert load_settings(None, env={"MSGBATCH_CONFIG": str(config)}).concurrency == 8


def test_api_keys_from_env() -> None:
    s = load_settings(None, env={"MSGBATCH_API_KEYS": "a=ws1, b=ws2,c"})
    assert s.api_keys == {"a": "ws1", "b": "ws2", "c": "default"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("port = 'x'", "port: expected an integer"),
        ("port = 70000", "port: 70000 is not a TCP port"),
        ("expiry = 'tomorrow'", "expiry: expected a duration"),
        ("concurrency = 0", "concurrency: must be at least 1"),
        ("[workspaces]\nteam = [1]", "workspaces.team: expected a list of API keys"),
        ("[workspaces]\nteam = ['env:NOPE_NOT_SET']", "NOPE_NOT_SET is not set"),
        ("port = ", "msgbatch.toml"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, content: str, message: str) -> None:
    config = tmp_path / "msgbatch.toml"
    config.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings(str(config), env={})


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings("/nonexistent/msgbatch.toml", env={})


def test_bad_env_value() -> None:
    with pytest.raises(ConfigError, match="MSGBATCH_PORT"):
        load_settings(None, env={"MSGBATCH_PORT": "eighty"})


def test_strict_batch_params_from_file_env_and_flag(tmp_path: Path) -> None:
    assert load_settings(None, env={}).strict_batch_params is False  # off by default
    config = tmp_path / "msgbatch.toml"
    config.write_text("strict_batch_params = true\n")
    assert load_settings(str(config), env={}).strict_batch_params is True
    assert load_settings(str(config), env={"MSGBATCH_STRICT_BATCH_PARAMS": "false"}).strict_batch_params is False
    assert load_settings(None, env={"MSGBATCH_STRICT_BATCH_PARAMS": "true"}).strict_batch_params is True
    assert load_settings(None, env={}, strict_batch_params=True).strict_batch_params is True
    config.write_text('strict_batch_params = "maybe"\n')
    with pytest.raises(ConfigError, match="strict_batch_params: expected true or false"):
        load_settings(str(config), env={})
    with pytest.raises(ConfigError, match="MSGBATCH_STRICT_BATCH_PARAMS: expected true or false"):
        load_settings(None, env={"MSGBATCH_STRICT_BATCH_PARAMS": "2"})


@pytest.mark.parametrize("command", ["serve", "worker"])
@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [([], {}, False), (["--strict-batch-params"], {}, True), ([], {"MSGBATCH_STRICT_BATCH_PARAMS": "true"}, True)],
)
def test_strict_batch_params_flag_and_env_on_serve_and_worker(
    command: str, args: list[str], env: dict[str, str], expected: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    import msgbatch.api.app
    import msgbatch.engine.worker
    from msgbatch.cli import main

    seen: list[bool] = []

    class Recorder:
        def __init__(self, settings: Any) -> None:
            seen.append(settings.strict_batch_params)
            self.app = None

        async def run(self) -> None:
            return None

    monkeypatch.setattr(msgbatch.api.app, "MsgBatchServer", Recorder)
    monkeypatch.setattr(msgbatch.engine.worker, "Worker", Recorder)
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: None)
    result = CliRunner().invoke(main, [command, "--database", str(tmp_path / "x.db"), *args], env=env)
    assert result.exit_code == 0, result.output
    assert seen == [expected]
