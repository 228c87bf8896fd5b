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

The keys of each backend type, their types and defaults are the structs in msgbatch/config.py
(`AnthropicBackendConfig`, `OpenAIBackendConfig`, `SimulatorBackendConfig`, `RouteConfig`), which
also check that routes and `default_backend` name a backend. With no backends configured (and no
`--upstream`), the simulator serves every model. Otherwise a model goes to the first route that
matches, else to `default_backend`, else — when there are no routes at all — to the first backend
(or the `--upstream` one); a model nothing serves ends `errored` with `not_found_error`. The name
`simulate` refers to the built-in simulator unless a backend of that name is declared.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from msgbatch.backends.anthropic import AnthropicBackend
from msgbatch.backends.base import Backend
from msgbatch.backends.limiter import AdaptiveLimiter
from msgbatch.backends.openai import OpenAIBackend
from msgbatch.backends.outage import OutageGuard
from msgbatch.backends.retry import RetryPolicy
from msgbatch.backends.router import Route, Router
from msgbatch.backends.simulate import SimulatorBackend
from msgbatch.config import (
    AnthropicBackendConfig,
    BackendConfig,
    ConfigError,
    HttpBackendConfig,
    OpenAIBackendConfig,
    Settings,
    parse_upstream,
)

__all__ = ["UPSTREAM_KEY_ENV", "build_router", "parse_upstream"]

log = logging.getLogger("msgbatch.backends")

UPSTREAM_KEY_ENV = "MSGBATCH_UPSTREAM_API_KEY"


def _http_backend(config: HttpBackendConfig, where: str, env: Mapping[str, str]) -> Backend:
    api_key = ""
    if config.api_key_env:
        api_key = env.get(config.api_key_env, "")
        if not api_key:
            raise ConfigError(f"environment variable {config.api_key_env} is not set", key=f"{where}.api_key_env")
    inner: Backend
    try:
        if isinstance(config, AnthropicBackendConfig):
            inner = AnthropicBackend(
                config.name,
                config.url,
                auth=config.auth,
                anthropic_version=config.anthropic_version,
                model=config.model,
                timeout=config.timeout,
                concurrency=config.concurrency,
                api_key=api_key,
                headers=dict(config.headers),
                client=config.client,
            )
        else:
            inner = OpenAIBackend(
                config.name,
                config.url,
                model=config.model,
                timeout=config.timeout,
                concurrency=config.concurrency,
                api_key=api_key,
                headers=dict(config.headers),
                client=config.client,
            )
    except ValueError as exc:  # the URL
        raise ConfigError(str(exc), key=where) from None
    retry = RetryPolicy(max_attempts=config.max_attempts, base=config.backoff, cap=config.backoff_cap)
    # The guard inside the limiter: requests waiting out an outage hold their slots, so nothing
    # more is sent meanwhile, and overload signals from a live upstream still reach the limiter.
    return AdaptiveLimiter(
        OutageGuard(inner), config.concurrency, min_limit=config.min_concurrency, adaptive=config.adaptive, retry=retry
    )


def _backend(config: BackendConfig, env: Mapping[str, str]) -> Backend:
    if isinstance(config, AnthropicBackendConfig | OpenAIBackendConfig):
        return _http_backend(config, f"backends.{config.name}", env)
    return SimulatorBackend(default_latency=config.latency, name=config.name)


def build_router(settings: Settings, env: Mapping[str, str] | None = None) -> Router:
    """The Router the settings describe (see the module's docstring)."""
    env = os.environ if env is None else env
    backends = {config.name: _backend(config, env) for config in settings.backends}

    upstream: Backend | None = None
    if settings.upstream:
        kind, url = parse_upstream(settings.upstream)
        # The shortcut's key comes from MSGBATCH_UPSTREAM_API_KEY; its concurrency is the process's.
        key_env = UPSTREAM_KEY_ENV if env.get(UPSTREAM_KEY_ENV) else ""
        kind_of = AnthropicBackendConfig if kind == "anthropic" else OpenAIBackendConfig
        # Named after where it is (`127.0.0.1:8000`), so that logs and metrics say which server;
        # routes in a config file may still call it `upstream`.
        name = urlsplit(url).netloc or "upstream"
        config = kind_of(name=name, url=url, api_key_env=key_env, concurrency=settings.concurrency)
        upstream = backends["upstream"] = _http_backend(config, "upstream", env)

    if not backends:
        return Router([], SimulatorBackend(default_latency=settings.simulate_latency))

    def named(name: str) -> Backend:
        # Settings made sure the name is a backend's, or the built-in simulator's.
        if name not in backends:
            backends[name] = SimulatorBackend(default_latency=settings.simulate_latency)
        return backends[name]

    routes = [Route(route.pattern, named(route.backend)) for route in settings.routes]
    default: Backend | None = None
    if settings.default_backend is not None:
        default = named(settings.default_backend)
    elif upstream is not None:
        default = upstream
    elif not routes:
        default = next(iter(backends.values()))

    for backend in {id(b): b for b in backends.values()}.values():
        log.info("backend name=%s %r", backend.name, backend)
    return Router(routes, default)
