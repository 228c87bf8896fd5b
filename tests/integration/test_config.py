"""Settings: defaults, TOML file, MSGBATCH_* env vars and flags, in that order of precedence, decoded
into typed settings; a bad one is an error naming its source and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from msgbatch import config
from msgbatch.config import (
    AnthropicBackendConfig,
    ConfigError,
    OpenAIBackendConfig,
    RouteConfig,
    Seconds,
    Settings,
    SimulatorBackendConfig,
    load_settings,
    parse_duration,
)

README = Path(__file__).resolve().parents[2] / "README.md"


def from_file(tmp_path: Path, content: str, env: dict[str, str] | None = None, **flags: object) -> Settings:
    config = tmp_path / "msgbatch.toml"
    config.write_text(content)
    return load_settings(str(config), env=env or {}, **flags)


def test_defaults() -> None:
    s = load_settings(None, env={})
    assert (s.host, s.port, s.database) == ("127.0.0.1", 8787, "msgbatch.db")
    assert s.expiry_seconds == 86400 and s.retention_seconds == 29 * 86400
    assert s.lease_seconds == 60 and s.grace_seconds == 10
    assert s.open_auth and s.worker and s.api_keys == {}
    assert s.backends == [] and s.routes == [] and s.upstream == "" and s.default_backend is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("90s", 90), ("15m", 900), ("24h", 86400), ("29d", 29 * 86400), ("2.5", 2.5), (3, 3.0)],
)
def test_durations(tmp_path: Path, text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    value = f'"{text}"' if isinstance(text, str) else str(text)
    assert from_file(tmp_path, f"expiry = {value}").expiry_seconds == pytest.approx(seconds)
    assert load_settings(None, env={"MSGBATCH_GRACE": str(text)}).grace_seconds == pytest.approx(seconds)
    assert load_settings(None, env={}, retention=text).retention_seconds == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["soon", "-1s", "1w", "", True, None, float("inf"), -3])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match=r"duration|negative"):
        parse_duration(bad)


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    s = from_file(
        tmp_path,
        'port = 9000\nexpiry = "2h"\nretention = "3d"\ndatabase = "from-file.db"\nworker = false\n'
        '[workspaces]\nresearch = ["k1", "env:RESEARCH_KEY"]\neval = "k3"\n',
        env={"RESEARCH_KEY": "k2", "MSGBATCH_PORT": "9100", "MSGBATCH_RETENTION": "4d"},
        database="flag.db",
        retention=None,  # a flag not given
    )
    assert s.port == 9100  # env beats file
    assert s.database == "flag.db"  # flag beats file
    assert s.retention_seconds == 4 * 86400  # env beats file; the flag was not given
    assert s.expiry_seconds == 7200 and not s.worker  # the file beats the defaults
    assert s.workspaces == {"research": ["k1", "k2"], "eval": ["k3"]}
    assert s.api_keys == {"k1": "research", "k2": "research", "k3": "eval"}
    assert not s.open_auth


def test_config_file_from_env(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("concurrency = 8\n")
    assert load_settings(None, env={"MSGBATCH_CONFIG": str(config)}).concurrency == 8


def test_env_values_are_typed() -> None:
    s = load_settings(
        None,
        env={"MSGBATCH_WORKER": "false", "MSGBATCH_MAX_BODY_BYTES": "1024", "MSGBATCH_POLL_INTERVAL": "250ms"},
    )
    assert s.worker is False and s.max_body_bytes == 1024 and s.poll_interval == 0.25
    assert load_settings(None, env={"MSGBATCH_PORT": ""}).port == 8787  # empty means unset


def test_api_keys_from_env() -> None:
    s = load_settings(None, env={"MSGBATCH_API_KEYS": "a=ws1, b=ws2,c=ws1,"})
    assert s.api_keys == {"a": "ws1", "b": "ws2", "c": "ws1"}
    assert s.workspaces == {"ws1": ["a", "c"], "ws2": ["b"]}


@pytest.mark.parametrize("spec", ["sk-secret-1=ws1,sk-secret-2", "sk-secret-1=ws1, =ws2", "sk-secret-2="])
def test_an_api_key_without_a_workspace_is_an_error(spec: str) -> None:
    with pytest.raises(ConfigError, match=r"^MSGBATCH_API_KEYS: entry \d is not KEY=WORKSPACE$") as caught:
        load_settings(None, env={"MSGBATCH_API_KEYS": spec})
    assert "sk-secret" not in str(caught.value)


def test_an_api_key_in_two_workspaces_is_an_error(tmp_path: Path) -> None:
    content = '[workspaces]\nresearch = ["sk-secret-1", "sk-secret-2"]\neval = ["sk-secret-3", "sk-secret-2"]\n'
    with pytest.raises(ConfigError) as caught:
        from_file(tmp_path, content)
    message = str(caught.value)
    assert message.endswith(
        "msgbatch.toml: workspaces.eval[1]: the same API key as workspaces.research[1]: a key belongs to one workspace"
    )
    assert "sk-secret" not in message
    # The same through an env: reference, and through MSGBATCH_API_KEYS.
    with pytest.raises(ConfigError, match=r"workspaces.b\[0\]: the same API key as workspaces.a\[0\]") as caught:
        from_file(tmp_path, '[workspaces]\na = ["env:KEY_A"]\nb = ["sk-secret-1"]\n', env={"KEY_A": "sk-secret-1"})
    assert "sk-secret" not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env={"MSGBATCH_API_KEYS": "sk-secret-1=ws1,sk-secret-2=ws2,sk-secret-1=ws2"})
    assert str(caught.value) == (
        "MSGBATCH_API_KEYS: entry 3 (workspace ws2) has the same key as entry 1 (workspace ws1): "
        "a key belongs to one workspace"
    )
    # Listed twice in one workspace is harmless.
    assert from_file(tmp_path, '[workspaces]\na = ["k", "k"]\n').api_keys == {"k": "a"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("prot = 8788", "prot: unknown key (did you mean port?)"),
        ("[backend]\nname = 'a'", "backend: unknown key (did you mean backends?)"),
        (
            "[[backends]]\nname = 'vllm'\ntype = 'openai'\nurl = 'http://h'\nconcurency = 3",
            "backends.vllm.concurency: unknown key (did you mean concurrency?)",
        ),
        ("[[backends]]\nname = 'sim'\ntype = 'simulate'\nurl = 'http://h'", "backends.sim.url: unknown key"),
        ("[[routes]]\npattern = '*'\nbackend = 'simulate'\nmodel = 'x'", "routes[0].model: unknown key"),
    ],
)
def test_an_unknown_key_is_an_error_that_names_it(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_file(tmp_path, content)
    assert str(caught.value) == f"{tmp_path / 'msgbatch.toml'}: {message}"


def backend(**keys: object) -> str:
    """A `[[backends]]` table named `a` (an openai backend unless `type` says otherwise)."""
    keys = {"name": "a", "type": "openai", "url": "http://h", **keys}
    return "[[backends]]\n" + "".join(f"{k} = {v!r}\n" for k, v in keys.items() if v is not None)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("port = 'x'", "port: expected an integer, got 'x'"),
        ("port = 70000", "port: expected an integer <= 65535, got 70000"),
        ("expiry = 'tomorrow'", "expiry: expected a duration like 500ms, 90s, 15m, 24h or 29d, got 'tomorrow'"),
        ("concurrency = 0", "concurrency: expected an integer >= 1, got 0"),
        ("lease = '500ms'", "lease: must be at least 1s"),
        ("worker = 'no'", "worker: expected true or false, got 'no'"),
        ("workspaces = ['k']", "workspaces: expected a table"),
        ("[workspaces]\nteam = [1]", "workspaces.team: expected a list of API keys"),
        ("[workspaces]\nteam = ['env:NOT_SET']", "workspaces.team[0]: environment variable NOT_SET is not set"),
        ("[workspaces]\nteam = ['']", "workspaces.team[0]: an API key must not be empty"),
        ("upstream = 'grpc=http://h'", "upstream: expected anthropic=URL or openai=URL, got 'grpc=http://h'"),
        ("backends = {a = 1}", "backends: expected a list, got {'a': 1}"),
        (backend(type="grpc"), "backends.a.type: expected one of anthropic, openai, simulate, got 'grpc'"),
        (backend(type=None), "backends.a.type: required"),
        (backend(name=None, type="simulate", url=None), "backends[0].name: required"),
        (backend(url=None), "backends.a.url: required"),
        (
            backend(timeout="soon"),
            "backends.a.timeout: expected a duration like 500ms, 90s, 15m, 24h or 29d, got 'soon'",
        ),
        (backend(timeout=0), "backends.a.timeout: must be positive"),
        (backend(max_attempts=0), "backends.a.max_attempts: expected an integer >= 1, got 0"),
        (backend(adaptive="no"), "backends.a.adaptive: expected true or false, got 'no'"),
        (backend(client="curl"), "backends.a.client: expected one of builtin, httpx, got 'curl'"),
        (backend(type="anthropic", auth="basic"), "backends.a.auth: expected one of bearer, x-api-key, got 'basic'"),
        (backend(model=3), "backends.a.model: expected a string, got 3"),
        (backend() + "headers = {x = 1}", "backends.a.headers: expected a string"),
        (backend(concurrency=4, min_concurrency=8), "backends.a.min_concurrency: must not exceed concurrency (4)"),
        (backend(type="simulate", url=None) * 2, "backends.a: declared twice"),
        ("[[routes]]\npattern = 'x'\nbackend = 'gpu'", "routes[0].backend: no backend named 'gpu'"),
        ("[[routes]]\nbackend = 'simulate'", "routes[0].pattern: required"),
        ("default_backend = 'gpu'", "default_backend: no backend named 'gpu'"),
        ("port = ", "not valid TOML: Invalid value (at end of document)"),
    ],
)
def test_bad_files_say_what_is_wrong_and_where(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_file(tmp_path, content)
    assert str(caught.value) == f"{tmp_path / 'msgbatch.toml'}: {message}"


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"^config file not found: /nonexistent/msgbatch\.toml$"):
        load_settings("/nonexistent/msgbatch.toml", env={})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MSGBATCH_PORT": "eighty"}, "MSGBATCH_PORT: expected an integer, got 'eighty'"),
        ({"MSGBATCH_PORT": "0"}, "MSGBATCH_PORT: expected an integer >= 1, got '0'"),
        ({"MSGBATCH_EXPIRY": "3x"}, "MSGBATCH_EXPIRY: expected a duration like 500ms, 90s, 15m, 24h or 29d, got '3x'"),
        ({"MSGBATCH_WORKER": "maybe"}, "MSGBATCH_WORKER: expected true or false, got 'maybe'"),
        ({"MSGBATCH_LEASE": "0.5"}, "MSGBATCH_LEASE: must be at least 1s"),
    ],
)
def test_bad_env_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env=env)
    assert str(caught.value) == message


def test_bad_flags_name_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--port: expected an integer <= 65535, got 70000$"):
        load_settings(None, env={}, port=70000)
    with pytest.raises(ConfigError, match=r"^--lease: must be at least 1s$"):
        load_settings(None, env={}, lease_seconds=0.2)
    with pytest.raises(ConfigError, match=r"^--upstream: expected anthropic=URL"):
        load_settings(None, env={}, upstream="http://h")
    with pytest.raises(ConfigError, match="unknown setting 'prot'"):
        load_settings(None, env={}, prot=1)


def test_backends_and_routes_are_typed(tmp_path: Path) -> None:
    s = from_file(
        tmp_path,
        """
default_backend = "tgi"

[[backends]]
name = "vllm"
type = "anthropic"
url = "http://gpu:8000"
auth = "bearer"
concurrency = 128
timeout = "2m"
headers = { x-team = "research" }

[[backends]]
name = "tgi"
type = "openai"
url = "http://tgi:8080/v1"
model = "served"
backoff = "250ms"

[[backends]]
name = "sim"
type = "simulate"
latency = "10ms"

[[routes]]
pattern = "claude-*"
backend = "vllm"

[[routes]]
pattern = "test-*"
backend = "simulate"
""",
    )
    vllm, tgi, sim = s.backends
    assert vllm == AnthropicBackendConfig(
        name="vllm",
        url="http://gpu:8000",
        auth="bearer",
        concurrency=128,
        timeout=120.0,  # type: ignore[arg-type]
        headers={"x-team": "research"},
    )
    assert isinstance(tgi, OpenAIBackendConfig) and (tgi.model, tgi.backoff, tgi.timeout) == ("served", 0.25, 600)
    assert isinstance(sim, SimulatorBackendConfig) and sim.latency == 0.01
    assert s.routes == [
        RouteConfig(pattern="claude-*", backend="vllm"),
        RouteConfig(pattern="test-*", backend="simulate"),
    ]
    assert s.default_backend == "tgi"


def test_every_setting_is_in_the_readme() -> None:
    section = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for field in msgspec.structs.fields(Settings):
        assert f"`{field.encode_name}`" in section or f"[{field.encode_name}]" in section, field.encode_name


def test_a_list_setting_reads_its_env_var_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    """For settings such as a list of trusted proxies: `MSGBATCH_<KEY>=a,b` is the list [a, b]."""

    class WithList(msgspec.Struct):
        trusted_proxies: list[str] = []
        waits: list[Seconds] = []
        limits: dict[str, int] = {}  # a table: from the file only

    monkeypatch.setattr(config, "_FIELDS", {f.encode_name: f for f in msgspec.structs.fields(WithList)})
    env = {"MSGBATCH_TRUSTED_PROXIES": "10.0.0.1, 10.0.0.2,", "MSGBATCH_WAITS": "1s,2m", "MSGBATCH_LIMITS": "x"}
    assert list(config._from_env(env)) == [
        ("trusted_proxies", "MSGBATCH_TRUSTED_PROXIES", ["10.0.0.1", "10.0.0.2"]),
        ("waits", "MSGBATCH_WAITS", [1.0, 120.0]),
    ]
    with pytest.raises(ConfigError, match=r"^MSGBATCH_WAITS: expected a duration .*, got 'soon'$"):
        list(config._from_env({"MSGBATCH_WAITS": "1s,soon"}))


def test_strict_batch_params_from_file_env_and_flag(tmp_path: Path) -> None:
    assert load_settings(None, env={}).strict_batch_params is False  # off by default
    config = tmp_path / "msgbatch.toml"
    config.write_text("strict_batch_params = true\n")
    assert load_settings(str(config), env={}).strict_batch_params is True
    assert load_settings(str(config), env={"MSGBATCH_STRICT_BATCH_PARAMS": "false"}).strict_batch_params is False
    assert load_settings(None, env={"MSGBATCH_STRICT_BATCH_PARAMS": "true"}).strict_batch_params is True
    assert load_settings(None, env={}, strict_batch_params=True).strict_batch_params is True
    config.write_text('strict_batch_params = "maybe"\n')
    with pytest.raises(ConfigError, match="strict_batch_params: expected"):
        load_settings(str(config), env={})
    with pytest.raises(ConfigError, match="MSGBATCH_STRICT_BATCH_PARAMS: expected"):
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
