"""Build the Router from the settings: `[[backends]]` and `[[routes]]` in the config file, and the
`--upstream TYPE=URL` shortcut.

```toml
default_backend = "local"          # models no route matches (optional; see below)

[[backends]]
name = "local"
type = "openai"                    # anthropic | openai | simulate
url = "http://127.0.0.1:8000/v1"
api_key_env = "LOCAL_KEY"          # the key is read from this env var (never from the file)
timeout = "10m"                    # one upstream call
concurrency = 64                   # requests in flight at most (the adaptive limit's ceiling)

[[routes]]
pattern = "llama-*"                # shell-style, first match wins
backend = "local"
```

With no backends configured (and no `--upstream`), the simulator serves every model. Otherwise a
model goes to the first route that matches, else to `default_backend`, else — when there are no
routes at all — to the first backend (or the `--upstream` one); a model nothing serves ends
`errored` with `not_found_error`. The name `simulate` refers to the built-in simulator unless a
backend of that name is declared.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from msgbatch.backends.anthropic import AnthropicBackend
from msgbatch.backends.base import Backend
from msgbatch.backends.limiter import AdaptiveLimiter
from msgbatch.backends.openai import OpenAIBackend
from msgbatch.backends.retry import RetryPolicy
from msgbatch.backends.router import Route, Router
from msgbatch.backends.simulate import SimulatorBackend
from msgbatch.config import ConfigError, Settings, parse_duration

__all__ = ["UPSTREAM_KEY_ENV", "build_router", "parse_upstream"]

log = logging.getLogger("msgbatch.backends")

UPSTREAM_KEY_ENV = "MSGBATCH_UPSTREAM_API_KEY"
TYPES = ("anthropic", "openai", "simulate")

_COMMON_KEYS = {"name", "type"}
_HTTP_KEYS = {
    "url",
    "api_key_env",
    "model",
    "timeout",
    "concurrency",
    "min_concurrency",
    "adaptive",
    "max_attempts",
    "backoff",
    "backoff_cap",
    "headers",
    "client",
}
_KEYS = {
    "anthropic": _COMMON_KEYS | _HTTP_KEYS | {"auth", "anthropic_version"},
    "openai": _COMMON_KEYS | _HTTP_KEYS,
    "simulate": _COMMON_KEYS | {"latency"},
}

# Batches have hours: be patient with an upstream that stumbles (9 retries, up to a minute apart).
DEFAULT_TIMEOUT = 600.0
DEFAULT_CONCURRENCY = 64
DEFAULT_MAX_ATTEMPTS = 10
DEFAULT_BACKOFF = 1.0
DEFAULT_BACKOFF_CAP = 60.0


def parse_upstream(spec: str) -> tuple[str, str]:
    """`anthropic=http://host:8000` -> ("anthropic", "http://host:8000")."""
    kind, sep, url = spec.partition("=")
    kind = kind.strip()
    if not sep or kind not in ("anthropic", "openai") or not url.strip():
        raise ConfigError(f"upstream: expected anthropic=URL or openai=URL, got {spec!r}")
    return kind, url.strip()


def _int(table: Mapping[str, Any], key: str, where: str, default: int, minimum: int = 1) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}.{key}: expected an integer >= {minimum}, got {value!r}")
    return value


def _str(table: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str | None:
    value = table.get(key, default)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}.{key}: expected a string, got {value!r}")
    return value


def _duration(table: Mapping[str, Any], key: str, where: str, default: float) -> float:
    return parse_duration(table[key], name=f"{where}.{key}") if key in table else default


def _api_key(table: Mapping[str, Any], where: str, env: Mapping[str, str]) -> str:
    name = _str(table, "api_key_env", where)
    if not name:
        return ""
    key = env.get(name, "")
    if not key:
        raise ConfigError(f"{where}.api_key_env: environment variable {name} is not set")
    return key


def _http_backend(kind: str, table: Mapping[str, Any], where: str, env: Mapping[str, str]) -> Backend:
    name = str(table["name"])
    url = _str(table, "url", where)
    if not url:
        raise ConfigError(f"{where}.url: required for a {kind} backend")
    headers = table.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise ConfigError(f"{where}.headers: expected a table of strings")
    concurrency = _int(table, "concurrency", where, DEFAULT_CONCURRENCY)
    min_concurrency = _int(table, "min_concurrency", where, 1)
    if min_concurrency > concurrency:
        raise ConfigError(f"{where}.min_concurrency: must not exceed concurrency ({concurrency})")
    adaptive = table.get("adaptive", True)
    if not isinstance(adaptive, bool):
        raise ConfigError(f"{where}.adaptive: expected true or false")
    timeout = _duration(table, "timeout", where, DEFAULT_TIMEOUT)
    if timeout <= 0:
        raise ConfigError(f"{where}.timeout: must be positive")
    options: dict[str, Any] = {
        "api_key": _api_key(table, where, env),
        "model": _str(table, "model", where),
        "timeout": timeout,
        "concurrency": concurrency,
        "headers": dict(headers),
        "client": _str(table, "client", where, "builtin"),
    }
    inner: Backend
    try:
        if kind == "anthropic":
            auth = _str(table, "auth", where, "x-api-key")
            if auth not in ("x-api-key", "bearer"):
                raise ConfigError(f"{where}.auth: expected x-api-key or bearer, got {auth!r}")
            # A pin only when configured: otherwise each batch's own version goes upstream.
            version = _str(table, "anthropic_version", where) or None
            inner = AnthropicBackend(name, url, auth=auth, anthropic_version=version, **options)
        else:
            inner = OpenAIBackend(name, url, **options)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    retry = RetryPolicy(
        max_attempts=_int(table, "max_attempts", where, DEFAULT_MAX_ATTEMPTS),
        base=_duration(table, "backoff", where, DEFAULT_BACKOFF),
        cap=_duration(table, "backoff_cap", where, DEFAULT_BACKOFF_CAP),
    )
    return AdaptiveLimiter(inner, concurrency, min_limit=min_concurrency, adaptive=adaptive, retry=retry)


def _backend(table: object, index: int, env: Mapping[str, str]) -> Backend:
    where = f"backends.{index}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    name = _str(table, "name", where)
    if not name:
        raise ConfigError(f"{where}.name: required")
    where = f"backends.{name}"
    kind = _str(table, "type", where)
    if kind not in TYPES:
        raise ConfigError(f"{where}.type: expected one of {', '.join(TYPES)}, got {kind!r}")
    unknown = set(table) - _KEYS[kind]
    if unknown:
        raise ConfigError(f"{where}: unknown keys for a {kind} backend: {', '.join(sorted(unknown))}")
    if kind == "simulate":
        return SimulatorBackend(default_latency=_duration(table, "latency", where, 0.0), name=name)
    return _http_backend(kind, table, where, env)


def build_router(settings: Settings, env: Mapping[str, str] | None = None) -> Router:
    """The Router the settings describe (see the module's docstring)."""
    env = os.environ if env is None else env
    raw = settings.raw
    tables = raw.get("backends", [])
    if not isinstance(tables, list):
        raise ConfigError("backends: expected [[backends]] tables")
    backends: dict[str, Backend] = {}
    for index, table in enumerate(tables):
        backend = _backend(table, index, env)
        if backend.name in backends:
            raise ConfigError(f"backends.{backend.name}: declared twice")
        backends[backend.name] = backend

    upstream: Backend | None = None
    if settings.upstream:
        kind, url = parse_upstream(settings.upstream)
        if "upstream" in backends:
            raise ConfigError("backends.upstream: the name is taken by --upstream")
        spec: dict[str, Any] = {"name": "upstream", "type": kind, "url": url, "concurrency": settings.concurrency}
        if env.get(UPSTREAM_KEY_ENV):  # the shortcut's key comes from MSGBATCH_UPSTREAM_API_KEY
            spec["api_key_env"] = UPSTREAM_KEY_ENV
        upstream = backends["upstream"] = _http_backend(kind, spec, "upstream", env)

    if not backends:
        return Router([], SimulatorBackend(default_latency=settings.simulate_latency))

    def named(name: object, where: str) -> Backend:
        if name == "simulate" and "simulate" not in backends:
            backends["simulate"] = SimulatorBackend(default_latency=settings.simulate_latency)
        if not isinstance(name, str) or name not in backends:
            raise ConfigError(f"{where}: no backend named {name!r}")
        return backends[name]

    route_tables = raw.get("routes", [])
    if not isinstance(route_tables, list):
        raise ConfigError("routes: expected [[routes]] tables")
    routes: list[Route] = []
    for index, route in enumerate(route_tables):
        where = f"routes.{index}"
        if not isinstance(route, dict) or set(route) - {"pattern", "backend"}:
            raise ConfigError(f"{where}: expected a table with pattern and backend")
        pattern = _str(route, "pattern", where)
        if not pattern:
            raise ConfigError(f"{where}.pattern: required")
        routes.append(Route(pattern, named(route.get("backend"), f"{where}.backend")))

    default: Backend | None = None
    if raw.get("default_backend") is not None:
        default = named(raw["default_backend"], "default_backend")
    elif upstream is not None:
        default = upstream
    elif not routes:
        default = next(iter(backends.values()))

    for backend in backends.values():
        log.info("backend name=%s %r", backend.name, backend)
    return Router(routes, default)
