"""Settings in one place: defaults, then a TOML file, then `MSGBATCH_*` env vars, then flags."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_PORT = 8787
MIB = 1024 * 1024

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which setting and why."""


def parse_duration(value: object, *, name: str) -> float:
    """Seconds from a number or a string such as `90s`, `15m`, `24h`, `29d`, `500ms`."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ConfigError(f"{name}: expected a duration like 30s, 24h or 29d, got {value!r}")
    if seconds < 0:
        raise ConfigError(f"{name}: must not be negative")
    return seconds


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    database: str = "msgbatch.db"
    # Absolute base for results_url; empty means "derive from the request's Host / X-Forwarded-*".
    public_url: str = ""
    simulate_latency: float = 0.0
    # API key -> workspace. Empty: any non-empty key is accepted, all in workspace "default".
    api_keys: dict[str, str] = field(default_factory=dict)
    expiry_seconds: float = 24 * 3600.0
    retention_seconds: float = 29 * 86400.0
    max_requests: int = 100_000
    max_body_bytes: int = 256 * MIB
    # The HTTP edge (README, "Running it in front of clients"). Request line + headers, and how long
    # a client may take to send them; the longest wait for the next piece of a body.
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    # Peers whose X-Forwarded-Host/-Proto/-Prefix are believed (addresses or networks, or "*");
    # the hosts this server may be reached as (comma separated; empty: any).
    forwarded_allow_ips: str = "127.0.0.1,::1"
    allowed_hosts: str = ""
    # Create bodies held in memory at once; a create that does not fit waits this long, then gets 429.
    create_memory_bytes: int = 256 * MIB
    create_memory_wait: float = 10.0
    # Dispatcher
    worker: bool = True
    concurrency: int = 256
    lease_seconds: float = 60.0
    # On shutdown, how long running requests may take to finish before they are handed back.
    grace_seconds: float = 10.0
    poll_interval: float = 0.5
    lifecycle_interval: float = 1.0
    # `anthropic=URL` or `openai=URL`: one upstream serving every model (backends/config.py).
    upstream: str = ""
    # Sections that later layers (backends, routes) read from the file as they are.
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def open_auth(self) -> bool:
        return not self.api_keys


def _parse_keys(spec: str) -> dict[str, str]:
    """`key1=workspace-a,key2=workspace-b` (a bare key goes to workspace `default`)."""
    keys: dict[str, str] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        key, _, workspace = part.partition("=")
        keys[key.strip()] = workspace.strip() or "default"
    return keys


def _keys_from_file(section: object, env: dict[str, str]) -> dict[str, str]:
    """`[workspaces]` maps a workspace name to a list of keys; `env:NAME` reads a key from the env."""
    if not isinstance(section, dict):
        raise ConfigError("workspaces: expected a table of workspace = [keys]")
    keys: dict[str, str] = {}
    for workspace, values in section.items():
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ConfigError(f"workspaces.{workspace}: expected a list of API keys")
        for value in values:
            if value.startswith("env:"):
                resolved = env.get(value[4:], "")
                if not resolved:
                    raise ConfigError(f"workspaces.{workspace}: environment variable {value[4:]} is not set")
                value = resolved
            keys[value] = workspace
    return keys


_FILE_KEYS = {
    "host": str,
    "port": int,
    "database": str,
    "public_url": str,
    "simulate_latency": "duration",
    "expiry": "duration",
    "retention": "duration",
    "max_requests": int,
    "max_body_bytes": int,
    "max_header_bytes": int,
    "header_timeout": "duration",
    "body_timeout": "duration",
    "forwarded_allow_ips": str,
    "allowed_hosts": str,
    "create_memory_bytes": int,
    "create_memory_wait": "duration",
    "concurrency": int,
    "lease": "duration",
    "grace": "duration",
    "poll_interval": "duration",
    "lifecycle_interval": "duration",
    "upstream": str,
}
_RENAMED = {
    "expiry": "expiry_seconds",
    "retention": "retention_seconds",
    "lease": "lease_seconds",
    "grace": "grace_seconds",
}


def _coerce(name: str, kind: object, value: object) -> Any:
    if kind == "duration":
        return parse_duration(value, name=name)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    return value


def load_settings(config_file: str | None = None, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from file, env and explicit overrides (flags); later sources win."""
    env = dict(os.environ) if env is None else env
    values: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    config_file = config_file or env.get("MSGBATCH_CONFIG") or None
    if config_file:
        path = Path(config_file)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        for key, value in raw.items():
            if key in _FILE_KEYS:
                values[_RENAMED.get(key, key)] = _coerce(key, _FILE_KEYS[key], value)
        if "workspaces" in raw:
            values["api_keys"] = _keys_from_file(raw["workspaces"], env)
    for key, kind in _FILE_KEYS.items():
        env_name = "MSGBATCH_" + key.upper()
        if env.get(env_name):
            values[_RENAMED.get(key, key)] = _coerce(env_name, kind, env[env_name])
    if env.get("MSGBATCH_API_KEYS"):
        values["api_keys"] = _parse_keys(env["MSGBATCH_API_KEYS"])
    for key, value in overrides.items():
        if value is not None:
            values[key] = value
    known = {f.name for f in fields(Settings)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
    settings = replace(Settings(), raw=raw, **values)
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    if not 0 < settings.port < 65536:
        raise ConfigError(f"port: {settings.port} is not a TCP port")
    if settings.concurrency < 1:
        raise ConfigError("concurrency: must be at least 1")
    if settings.max_requests < 1 or settings.max_body_bytes < 1:
        raise ConfigError("max_requests and max_body_bytes must be positive")
    if settings.lease_seconds < 1:
        raise ConfigError("lease: must be at least 1s")
    if settings.max_header_bytes < 1024 or settings.create_memory_bytes < 1:
        raise ConfigError("max_header_bytes must be at least 1024 and create_memory_bytes positive")
    if settings.header_timeout <= 0 or settings.body_timeout <= 0:
        raise ConfigError("header_timeout and body_timeout must be positive")
