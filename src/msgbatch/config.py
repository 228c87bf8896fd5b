"""Settings in one place: defaults, then a TOML file, then `MSGBATCH_*` env vars, then flags.

`Settings` below is the whole schema: each field is a key of the config file (its `name=` when
that differs from the attribute), decoded by msgspec into its type, with the field's default. A
field of a plain type (str, int, float, bool, `Seconds`, or a list of them) is also read from
`MSGBATCH_<KEY>` (a list: comma-separated). Tables (`[[backends]]`, `[[routes]]`, `[workspaces]`,
`[limits.*]`, `[prices.*]`) come from the file only; `[workspaces]` also has `MSGBATCH_API_KEYS`.

Adding a setting is one line in `Settings`, for example `strict_batch_params: bool = False`: the
file key `strict_batch_params`, the env var `MSGBATCH_STRICT_BATCH_PARAMS` and
`load_settings(strict_batch_params=...)` follow. A flag is a click option in cli.py passed on to
`load_settings`. A table is a Struct like `RouteConfig` (`forbid_unknown_fields=True`, so that a
misspelt key is an error) and a field such as `limits: dict[str, LimitConfig] = {}`. Ranges go in
the type (`Positive`, `Annotated[int, Meta(...)]`); a rule between fields goes in the struct's
`__post_init__`, raising `ConfigError(problem, key=...)`.

Every error names where the value came from and its key, and never shows an API key:
`msgbatch.toml: port: expected an integer, got 'x'`, `MSGBATCH_PORT: expected an integer, got
'eighty'`, `msgbatch.toml: backends.vllm.concurency: unknown key (did you mean concurrency?)`.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import math
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta, field
from msgspec import inspect as mi

DEFAULT_PORT = 8787
MIB = 1024 * 1024


class ConfigError(ValueError):
    """The configuration cannot be used. `source` is where the value came from (a file, an env
    var, a flag), `key` the setting (`backends.vllm.timeout`), `problem` what is wrong with it."""

    def __init__(self, problem: str, *, key: str = "", source: str = "") -> None:
        self.problem, self.key, self.source = problem, key, source
        super().__init__(": ".join(part for part in (source, key, problem) if part))


# -- value types -------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as `500ms`, `90s`, `15m`, `24h`, `29d`, `2.5`."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    if seconds is None or not math.isfinite(seconds):
        raise ValueError(f"expected a duration like 500ms, 90s, 15m, 24h or 29d, got {value!r}")
    if seconds < 0:
        raise ValueError(f"must not be negative, got {value!r}")
    return seconds


class Seconds(float):
    """A duration setting, in seconds; written `500ms`, `90s`, `15m`, `24h`, `29d` or plain seconds."""


Positive = Annotated[int, Meta(ge=1)]
Port = Annotated[int, Meta(ge=1, le=65535)]
NonEmpty = Annotated[str, Meta(min_length=1)]


def _decode(type_: type, value: object) -> object:
    """msgspec's hook for the types it does not know."""
    if type_ is Seconds:
        return Seconds(parse_duration(value))
    raise NotImplementedError(type_)


def parse_upstream(spec: str) -> tuple[str, str]:
    """`anthropic=http://host:8000` -> ("anthropic", "http://host:8000")."""
    kind, sep, url = spec.partition("=")
    kind = kind.strip()
    if not sep or kind not in ("anthropic", "openai") or not url.strip():
        raise ConfigError(f"expected anthropic=URL or openai=URL, got {spec!r}", key="upstream")
    return kind, url.strip()


# -- the schema ----------------------------------------------------------------------------------


class _Table(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A table of the config file: an unknown key in it is an error. (Subclasses say
    `frozen=True` again for mypy, which does not inherit it.)"""


class _Backend(_Table, frozen=True, tag_field="type"):
    name: NonEmpty


class _HttpBackend(_Backend, frozen=True):
    url: NonEmpty
    api_key_env: str = ""  # the key is read from this env var, never from the file
    model: str | None = None  # sent upstream instead of the request's model
    # Batches have hours: be patient with an upstream that stumbles (9 retries, up to a minute apart).
    timeout: Seconds = Seconds(600)
    concurrency: Positive = 64
    min_concurrency: Positive = 1
    adaptive: bool = True
    max_attempts: Positive = 10
    backoff: Seconds = Seconds(1)
    backoff_cap: Seconds = Seconds(60)
    headers: dict[str, str] = {}
    client: Literal["builtin", "httpx"] = "builtin"

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ConfigError("must be positive", key="timeout")
        if self.min_concurrency > self.concurrency:
            raise ConfigError(f"must not exceed concurrency ({self.concurrency})", key="min_concurrency")


class AnthropicBackendConfig(_HttpBackend, frozen=True, tag="anthropic"):
    auth: Literal["x-api-key", "bearer"] = "x-api-key"
    # A pin when set; otherwise each batch's own anthropic-version goes upstream (2023-06-01 without one).
    anthropic_version: NonEmpty | None = None


class OpenAIBackendConfig(_HttpBackend, frozen=True, tag="openai"):
    pass


class SimulatorBackendConfig(_Backend, frozen=True, tag="simulate"):
    latency: Seconds = Seconds(0)


BackendConfig = AnthropicBackendConfig | OpenAIBackendConfig | SimulatorBackendConfig
HttpBackendConfig = AnthropicBackendConfig | OpenAIBackendConfig


class RouteConfig(_Table, frozen=True):
    pattern: NonEmpty  # shell-style; the first route that matches wins
    backend: NonEmpty


class LimitConfig(_Table, frozen=True):
    """`[limits.default]` and `[limits.<workspace>]`: a workspace's quotas and its fair share.

    A key left out of `[limits.<workspace>]` takes its value from `[limits.default]`; one left
    out of both is no limit (weight: 1)."""

    max_queued_requests: Positive | None = None  # requests created and not finished yet
    max_batches_in_progress: Positive | None = None  # batches in progress or canceling
    max_in_flight_per_backend: Positive | None = None  # requests running at once on one backend, per worker
    weight: Annotated[float, Meta(gt=0)] | None = None  # share of each backend, against other workspaces


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """One workspace's limits, `[limits.default]` applied: what the manager and dispatcher use."""

    max_queued_requests: int | None = None
    max_batches_in_progress: int | None = None
    max_in_flight_per_backend: int | None = None
    weight: float = 1.0


class PriceConfig(_Table, frozen=True):
    """`[prices."<model pattern>"]`: what a million tokens of each kind cost (USD, or any one currency)."""

    input: Annotated[float, Meta(ge=0)] = 0.0
    output: Annotated[float, Meta(ge=0)] = 0.0
    cache_read: Annotated[float, Meta(ge=0)] = 0.0
    cache_creation: Annotated[float, Meta(ge=0)] = 0.0

    def cost(self, input_tokens: int, output_tokens: int, cache_read: int, cache_creation: int) -> float:
        total = (
            input_tokens * self.input
            + output_tokens * self.output
            + cache_read * self.cache_read
            + cache_creation * self.cache_creation
        )
        return total / 1_000_000


DEFAULT_LIMITS = "default"


WEBHOOK_EVENTS = ("message_batch.ended", "message_batch.canceling")


class WebhookConfig(_Table, frozen=True):
    """A receiver of batch events (`[[webhooks]]`): trusted as written, whatever its address."""

    url: NonEmpty
    secret_env: NonEmpty  # the env var holding its `whsec_...` signing secret, never the secret itself
    workspace: str | None = None  # None: the batches of every workspace
    events: list[Literal["message_batch.ended", "message_batch.canceling"]] = []  # empty: every event

    def __post_init__(self) -> None:
        if not _is_http_url(self.url):
            raise ConfigError(f"expected an http:// or https:// URL with a host, got {self.url!r}", key="url")


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises on a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class Settings(_Table, frozen=True):
    """Everything configurable, typed; the config file's top level (see the module docstring)."""

    host: str = "127.0.0.1"
    port: Port = DEFAULT_PORT
    database: str = "msgbatch.db"
    # Absolute base for results_url; empty means "derive from the request's Host / X-Forwarded-*".
    public_url: str = ""
    simulate_latency: Seconds = Seconds(0)
    # Workspace -> its API keys. Empty: any non-empty key is accepted, all in workspace "default".
    workspaces: dict[str, list[NonEmpty]] = {}
    expiry_seconds: Seconds = field(default=Seconds(24 * 3600), name="expiry")
    retention_seconds: Seconds = field(default=Seconds(29 * 86400), name="retention")
    max_requests: Positive = 100_000
    max_body_bytes: Positive = 256 * MIB
    # The HTTP edge (README, "Running it in front of clients"): the request line + headers, how long
    # a client may take to send them, and the longest wait for the next piece of a body.
    max_header_bytes: Annotated[int, Meta(ge=1024)] = 64 * 1024
    header_timeout: Seconds = Seconds(10)
    body_timeout: Seconds = Seconds(30)
    # Peers whose X-Forwarded-Host/-Proto/-Prefix are believed (addresses, networks, or "*"), and
    # the hosts this server answers as (empty: any). Checked by api/forwarded.py.
    forwarded_allow_ips: list[str] = field(default_factory=lambda: ["127.0.0.1", "::1"])
    allowed_hosts: list[str] = []
    # Create bodies held in memory at once; a create that does not fit waits this long, then gets 429.
    create_memory_bytes: Positive = 256 * MIB
    create_memory_wait: Seconds = Seconds(10)
    # The OpenAI Batch API's limits, OpenAI's own by default; those above cap them.
    max_file_bytes: Positive = 200 * MIB  # an uploaded file
    max_file_lines: Positive = 50_000  # requests in a batch's input file
    # Dispatcher
    worker: bool = True
    concurrency: Positive = 256
    lease_seconds: Seconds = field(default=Seconds(60), name="lease")
    # On shutdown, how long running requests may take to finish before they are handed back.
    grace_seconds: Seconds = field(default=Seconds(10), name="grace")
    poll_interval: Seconds = Seconds(0.5)
    lifecycle_interval: Seconds = Seconds(1)
    # `msgbatch worker`: serve /metrics, /health and /ready on this port (none by default).
    metrics_port: Port | None = None
    metrics_host: str = "127.0.0.1"
    # PostgreSQL: how long a call may wait for a connection before it answers 503.
    database_timeout: Seconds = Seconds(3)
    # Backends (backends/config.py builds the Router from these).
    upstream: str = ""  # `anthropic=URL` or `openai=URL`: one upstream serving every model
    # Refuse (errored, invalid_request_error) what the hosted API refuses inside a batch.
    strict_batch_params: bool = False
    default_backend: str | None = None
    backends: list[BackendConfig] = []
    routes: list[RouteConfig] = []
    # Quotas and fair shares per workspace: `[limits.default]`, `[limits.<workspace>]`.
    limits: dict[str, LimitConfig] = {}
    # Model pattern (shell-style, first match wins) -> price per million tokens: turns usage into cost.
    prices: dict[str, PriceConfig] = {}
    # Batch features beyond the hosted API (README: "Beyond the hosted API").
    abort_running_on_cancel: bool = False  # a cancel also stops running requests, unless ?abort_running=false
    webhooks: list[WebhookConfig] = []
    # Per-batch `webhook_url`s are accepted when they start with one of these (none: refused).
    webhook_url_prefixes: list[str] = []
    webhook_url_secret_env: str = ""  # the env var holding the secret that signs per-batch webhooks
    webhook_timeout: Seconds = Seconds(10)
    webhook_backoff: Seconds = Seconds(5)  # the first retry's delay; doubled each time, at most an hour
    webhook_retry_for: Seconds = Seconds(24 * 3600)  # a delivery is retried this long, then given up

    def __post_init__(self) -> None:
        if self.lease_seconds < 1:
            raise ConfigError("must be at least 1s", key="lease")
        for key in ("header_timeout", "body_timeout"):
            if getattr(self, key) <= 0:
                raise ConfigError("must be positive", key=key)
        names = {"simulate"}  # the built-in simulator, unless a backend takes the name
        for backend in self.backends:
            if backend.name in names - {"simulate"}:
                raise ConfigError("declared twice", key=f"backends.{backend.name}")
            names.add(backend.name)
        if self.upstream:
            parse_upstream(self.upstream)
            if "upstream" in names:
                raise ConfigError("the name is taken by --upstream", key="backends.upstream")
            names.add("upstream")
        for index, route in enumerate(self.routes):
            if route.backend not in names:
                raise ConfigError(f"no backend named {route.backend!r}", key=f"routes[{index}].backend")
        if self.default_backend is not None and self.default_backend not in names:
            raise ConfigError(f"no backend named {self.default_backend!r}", key="default_backend")
        for index, prefix in enumerate(self.webhook_url_prefixes):
            if not _is_http_url(prefix):
                problem = f"expected an http:// or https:// URL with a host, got {prefix!r}"
                raise ConfigError(problem, key=f"webhook_url_prefixes[{index}]")
        if self.webhook_url_prefixes and not self.webhook_url_secret_env:
            problem = "required with webhook_url_prefixes: the env var holding the secret that signs those webhooks"
            raise ConfigError(problem, key="webhook_url_secret_env")

    def limits_for(self, workspace: str) -> Limits:
        """The workspace's limits: its own table's keys, else `[limits.default]`'s."""
        own = self.limits.get(workspace)
        default = self.limits.get(DEFAULT_LIMITS)
        values: dict[str, Any] = {}
        for name in ("max_queued_requests", "max_batches_in_progress", "max_in_flight_per_backend", "weight"):
            value = getattr(own, name, None) if own is not None else None
            if value is None and default is not None:
                value = getattr(default, name)
            if value is not None:
                values[name] = value
        return Limits(**values)

    def price_for(self, model: str) -> PriceConfig | None:
        """The price of a model: the first `[prices]` pattern it matches."""
        for pattern, price in self.prices.items():
            if fnmatch.fnmatchcase(model, pattern):
                return price
        return None

    @property
    def api_keys(self) -> dict[str, str]:
        """API key -> its workspace (`load_settings` made sure no key is in two)."""
        return {key: workspace for workspace, keys in self.workspaces.items() for key in keys}

    @property
    def open_auth(self) -> bool:
        return not self.workspaces


_FIELDS = {f.encode_name: f for f in msgspec.structs.fields(Settings)}
_KEY_OF = {f.name: f.encode_name for f in _FIELDS.values()} | {key: key for key in _FIELDS}


# -- loading -------------------------------------------------------------------------------------


def load_settings(config_file: str | None = None, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from the file, the env and `overrides` (flags; by key or attribute name, None
    meaning "not given"), later sources winning key by key. Raises ConfigError."""
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    origins: dict[str, str] = {}  # key -> where its value came from
    path = config_file or env.get("MSGBATCH_CONFIG")
    if path:
        for key, value in _read_file(path).items():
            values[key], origins[key] = _prepare(key, value, env, path), path
    for key, source, value in _from_env(env):
        values[key], origins[key] = value, source
    for name, value in overrides.items():
        if value is None:
            continue
        if name not in _KEY_OF:
            raise ConfigError(f"unknown setting {name!r}")
        key = _KEY_OF[name]
        source = "--" + key.replace("_", "-")
        values[key], origins[key] = _prepare(key, value, env, source), source
    try:
        return msgspec.convert(values, Settings, dec_hook=_decode)
    except msgspec.ValidationError as exc:
        key, problem = _explain(exc, Settings, values)
        top = re.split(r"[.\[]", key)[0]
        source = origins.get(top, "")
        if source and source != path:  # an env var or a flag names the key itself
            key = key[len(top) :].lstrip(".")
        raise ConfigError(problem, key=key, source=source) from None


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read it: {exc.strerror}", source=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=path) from None


def _env_kind(info: mi.Type) -> Literal["scalar", "list"] | None:
    """How a field of this type reads its env var: as one value, comma-separated, or not at all."""
    info = _member(info, None)
    if isinstance(info, mi.ListType):
        return "list" if _env_kind(info.item_type) == "scalar" else None
    members = info.types if isinstance(info, mi.UnionType) else (info,)
    plain = (mi.StrType, mi.IntType, mi.FloatType, mi.BoolType, mi.NoneType, mi.CustomType)
    return "scalar" if all(isinstance(_member(member, None), plain) for member in members) else None


@functools.cache
def _env_kind_of(tp: Any) -> Literal["scalar", "list"] | None:
    # Read off each type once per process: all of them take ~3 ms, as long as the rest of loading.
    return _env_kind(mi.type_info(tp))


def _from_env(env: Mapping[str, str]) -> Iterator[tuple[str, str, object]]:
    """(key, env var, typed value) for each `MSGBATCH_*` setting that is set and not empty."""
    for key, info in _FIELDS.items():
        name = "MSGBATCH_" + key.upper()
        kind = _env_kind_of(info.type)
        text = env.get(name, "")
        if not kind or not text:
            continue
        raw: object = [part.strip() for part in text.split(",") if part.strip()] if kind == "list" else text
        try:
            value = msgspec.convert(raw, info.type, strict=False, dec_hook=_decode)
        except msgspec.ValidationError as exc:
            raise ConfigError(_explain(exc, info.type, raw)[1], source=name) from None
        yield key, name, value
    if env.get("MSGBATCH_API_KEYS"):
        yield "workspaces", "MSGBATCH_API_KEYS", _workspaces_from_env(env["MSGBATCH_API_KEYS"])


def _prepare(key: str, value: object, env: Mapping[str, str], source: str) -> object:
    """A file's or a flag's value as msgspec takes it (`[workspaces]` needs this); the tables of a
    table (`[limits.<workspace>]`, `[prices.<model>]`) are checked one by one, so that an error
    names the one at fault (msgspec does not say which key of a dict it was checking)."""
    if key == "workspaces":
        return _workspaces_from_table(value, env, source)
    kind = _TABLES_OF_TABLES.get(key)
    if kind is not None and isinstance(value, dict):
        for name, table in value.items():
            try:
                msgspec.convert(table, kind, dec_hook=_decode)
            except msgspec.ValidationError as exc:
                inner, problem = _explain(exc, kind, table)
                raise ConfigError(problem, key=".".join(filter(None, (key, name, inner))), source=source) from None
    return value


_TABLES_OF_TABLES: dict[str, type] = {"limits": LimitConfig, "prices": PriceConfig}


def _workspaces_from_table(table: object, env: Mapping[str, str], source: str) -> object:
    """`{workspace: [key, "env:NAME", ...] or key}` -> `{workspace: [key, ...]}`, each key in one
    workspace. Errors name a key by its position, never by itself: it is a secret."""
    if not isinstance(table, dict):
        return table  # msgspec says what is wrong with it
    first: dict[str, tuple[str, str]] = {}  # key -> (its workspace, where it was first listed)
    resolved: dict[str, list[str]] = {}
    for workspace, listed in table.items():
        listed = [listed] if isinstance(listed, str) else listed
        if not isinstance(listed, list) or not all(isinstance(key, str) for key in listed):
            raise ConfigError("expected a list of API keys", key=f"workspaces.{workspace}", source=source)
        keys = resolved[workspace] = []
        for index, key in enumerate(listed):
            where = f"workspaces.{workspace}[{index}]"
            if key.startswith("env:"):
                key = env.get(key[4:], "")
                if not key:
                    raise ConfigError(f"environment variable {listed[index][4:]} is not set", key=where, source=source)
            if not key:
                raise ConfigError("an API key must not be empty", key=where, source=source)
            other, at = first.setdefault(key, (workspace, where))
            if other != workspace:
                problem = f"the same API key as {at}: a key belongs to one workspace"
                raise ConfigError(problem, key=where, source=source)
            keys.append(key)
    return resolved


def _workspaces_from_env(spec: str) -> dict[str, list[str]]:
    """`key1=workspace-a,key2=workspace-b` -> `{workspace: [key, ...]}`, each key in one workspace."""
    workspaces: dict[str, list[str]] = {}
    first: dict[str, tuple[int, str]] = {}  # key -> (entry number, workspace)
    entries = [entry.strip() for entry in spec.split(",")]
    for number, entry in enumerate((e for e in entries if e), start=1):
        key, _, workspace = (part.strip() for part in entry.partition("="))
        if not key or not workspace:
            raise ConfigError(f"entry {number} is not KEY=WORKSPACE", source="MSGBATCH_API_KEYS")
        at, other = first.setdefault(key, (number, workspace))
        if other != workspace:
            raise ConfigError(
                f"entry {number} (workspace {workspace}) has the same key as entry {at} (workspace {other}): "
                "a key belongs to one workspace",
                source="MSGBATCH_API_KEYS",
            )
        workspaces.setdefault(workspace, []).append(key)
    return workspaces


# -- errors: msgspec's messages, in the words of the config file ---------------------------------

_AT = re.compile(r"^(.*?)(?: - at `\$(.*)`)?$", re.DOTALL)
_STEP = re.compile(r"\.([^.\[]+)|\[([^\]]*)\]")
_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "array": "a list",
    "object": "a table",
}
_SECRET = {"workspaces", "headers"}  # values under these keys are never shown
_MISSING = object()


def _explain(exc: msgspec.ValidationError, root: Any, raw: object) -> tuple[str, str]:
    """(key, problem) for an error converting `raw` to `root`: ("backends.vllm.timeout", "expected ...")."""
    match = _AT.match(str(exc))
    message, path = (match.group(1), match.group(2) or "") if match else (str(exc), "")
    words, value, info = _walk(root, raw, [name or index for name, index in _STEP.findall(path)])
    cause = exc.__cause__
    shown = "" if value is _MISSING or _SECRET & set(words) else f", got {_short(value)}"
    if isinstance(cause, ConfigError):  # a struct's own rule
        words += [cause.key] if cause.key else []
        problem = cause.problem
    elif isinstance(cause, ValueError | TypeError):  # a value type's parser
        problem = str(cause)
    elif m := re.fullmatch(r"Object contains unknown field `(.+)`", message):
        words.append(m.group(1))
        known = [f.encode_name for f in info.fields] if isinstance(info, mi.StructType) else []
        close = difflib.get_close_matches(m.group(1), known, n=1)
        problem = f"unknown key (did you mean {close[0]}?)" if close else "unknown key"
    elif m := re.fullmatch(r"Object missing required field `(.+)`", message):
        words.append(m.group(1))
        problem = "required"
    elif m := re.fullmatch(r"Expected `(.+?)`(, got `.+`)?(.*)", message, re.DOTALL):
        names = [name for name in m.group(1).split(" | ") if name != "null"]
        problem = f"expected {' or '.join(_WORDS.get(n, n) for n in names)}{m.group(3)}{shown}"
    elif message.startswith(("Invalid enum value", "Invalid value")) and isinstance(info, mi.LiteralType):
        problem = f"expected one of {', '.join(map(str, info.values))}{shown}"
    else:
        problem = message[:1].lower() + message[1:]
    return ".".join(words).replace(".[", "["), problem


def _walk(root: Any, raw: object, steps: list[str]) -> tuple[list[str], object, Any]:
    """Follow a msgspec error path through the raw values and the types: the key's words (a table
    of a list by its `name`, else by its index), the raw value there and its type."""
    words: list[str] = []
    info: Any = mi.type_info(root)
    for step in steps:
        info = _member(info, raw)
        if isinstance(info, mi.UnionType) and step in {s.tag_field for s in info.types if isinstance(s, mi.StructType)}:
            info = mi.LiteralType(tuple(s.tag for s in info.types if isinstance(s, mi.StructType)))
        elif isinstance(info, mi.StructType):
            info = next((f.type for f in info.fields if f.encode_name == step), None)
        elif isinstance(info, mi.ListType | mi.DictType):
            info = info.item_type if isinstance(info, mi.ListType) else info.value_type
        if step.isdigit():
            raw = raw[int(step)] if isinstance(raw, list) and int(step) < len(raw) else _MISSING
            name = raw.get("name") if isinstance(raw, dict) else None
            words.append(name if isinstance(name, str) and name else f"[{step}]")
        elif step == "...":  # a value of a table, under a key msgspec does not say
            raw = _MISSING
        else:
            words.append(step)
            raw = raw.get(step, _MISSING) if isinstance(raw, dict) else _MISSING
    return words, raw, _member(info, raw)


def _member(info: Any, raw: object) -> Any:
    """The type that `raw` is checked against: through Annotated, and the union member it is."""
    if isinstance(info, mi.Metadata):
        info = info.type
    if isinstance(info, mi.UnionType) and isinstance(raw, dict):
        for member in info.types:
            if isinstance(member, mi.StructType) and member.tag is not None and raw.get(member.tag_field) == member.tag:
                return member
    return info


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
