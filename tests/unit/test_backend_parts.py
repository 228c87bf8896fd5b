"""The pieces of the HTTP backends on their own: error mapping, retry-after, the HTTP client, the
adaptive limiter, and building the router from the configuration."""

from __future__ import annotations

import asyncio
import email.utils
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import make_settings
from fake_upstream import FakeUpstream
from msgbatch.backends.anthropic import AnthropicBackend, normalize_message
from msgbatch.backends.base import CallContext, RequestCanceled, request_canceled
from msgbatch.backends.client import HTTPClient, RawResponse
from msgbatch.backends.config import build_router, parse_upstream
from msgbatch.backends.http import error_type_for_status, is_overload, parse_retry_after, upstream_error
from msgbatch.backends.limiter import AdaptiveLimiter
from msgbatch.backends.mock import MockBackend
from msgbatch.backends.openai import OpenAIBackend
from msgbatch.backends.retry import RetryPolicy
from msgbatch.backends.simulate import SimulatorBackend
from msgbatch.config import ConfigError
from msgbatch.errors import MsgbatchError, error_for_type

KEY = "sk-secret-abcdef"


def response(status: int, body: bytes = b"", **headers: str) -> RawResponse:
    return RawResponse(status, "Reason", {k.replace("_", "-"): v for k, v in headers.items()}, body)


# --- status, retry-after, error bodies --------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type", "retryable"),
    [
        (400, "invalid_request_error", False),
        (401, "authentication_error", False),
        (402, "billing_error", False),
        (403, "permission_error", False),
        (404, "not_found_error", False),
        (408, "timeout_error", True),
        (413, "invalid_request_error", False),
        (422, "invalid_request_error", False),
        (429, "rate_limit_error", True),
        (500, "api_error", True),
        (502, "api_error", True),
        (503, "overloaded_error", True),
        (504, "timeout_error", True),
        (529, "overloaded_error", True),
        (599, "api_error", True),
    ],
)
def test_status_mapping(status: int, error_type: str, retryable: bool) -> None:
    assert error_type_for_status(status) == error_type
    error = upstream_error(response(status, b"not json"), backend="up")
    assert (error.type, error.retryable, error.upstream_status) == (error_type, retryable, status)
    assert f"HTTP {status}" in error.message and "not json" in error.message


def test_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "0.25"}) == 0.25
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= (parse_retry_after({"retry-after": date}, now=now) or 0) <= 31
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "-5"}) == 0.0
    assert parse_retry_after({"retry-after": "1e12"}) == 86400.0
    assert parse_retry_after({}) is None
    error = upstream_error(response(429, retry_after="2"), backend="up")
    assert error.retry_after == 2.0
    assert upstream_error(response(400, retry_after="2"), backend="up").retry_after is None


@pytest.mark.parametrize(
    ("body", "error_type", "message"),
    [
        (
            b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
            "overloaded_error",
            "Overloaded",
        ),
        (b'{"error":{"message":"bad model","type":"BadRequestError","code":400}}', "api_error", "bad model"),
        (b'{"object":"error","message":"too long","type":"BadRequestError"}', "api_error", "too long"),
        (b'{"error":"model \'x\' not found"}', "api_error", "model 'x' not found"),
        (
            b'{"detail":[{"loc":["body"],"msg":"field required"}]}',
            "api_error",
            '[{"loc":["body"],"msg":"field required"}]',
        ),
    ],
)
def test_error_bodies_of_known_servers(body: bytes, error_type: str, message: str) -> None:
    error = upstream_error(response(500, body), backend="up")
    assert error.type == error_type and error.message == message


def test_should_retry_header_and_key_redaction() -> None:
    body = f'{{"error":{{"message":"Incorrect API key provided: {KEY}"}}}}'.encode()
    error = upstream_error(response(401, body), backend="up", secrets=[KEY])
    assert KEY not in error.message and "***" in error.message
    assert upstream_error(response(500, x_should_retry="false"), backend="up").retryable is False
    assert upstream_error(response(400, x_should_retry="true"), backend="up").retryable is True


def test_overload_signals() -> None:
    assert is_overload(error_for_type("rate_limit_error", "", retryable=True, upstream_status=429))
    assert is_overload(error_for_type("overloaded_error", "", retryable=True, upstream_status=529))
    assert is_overload(error_for_type("overloaded_error", "", retryable=True, upstream_status=503))
    assert is_overload(error_for_type("timeout_error", "", retryable=True))  # a transport timeout
    assert not is_overload(error_for_type("api_error", "", retryable=True, upstream_status=500))
    assert not is_overload(error_for_type("api_error", "", retryable=True))  # a reset
    assert not is_overload(error_for_type("invalid_request_error", "", upstream_status=400))


def test_normalize_message_fills_what_compatible_servers_leave_out() -> None:
    answer: dict[str, Any] = {"content": [{"type": "text", "text": "hi"}], "stop_reason": "stop"}
    message = normalize_message(answer, "m", "up")
    assert message["type"] == "message" and message["role"] == "assistant" and message["model"] == "m"
    assert message["id"].startswith("msg_") and message["stop_sequence"] is None
    assert message["stop_reason"] == "end_turn"
    assert message["usage"] == {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "service_tier": "batch",
    }
    for broken in ({"type": "error"}, {"content": "text"}, {"content": [{"text": "no type"}]}):
        with pytest.raises(MsgbatchError) as caught:
            normalize_message(dict(broken), "m", "up")
        assert caught.value.retryable


# --- the HTTP client --------------------------------------------------------------------------


async def test_client_keeps_connections_and_replaces_stale_ones() -> None:
    with FakeUpstream() as fake:
        client = HTTPClient(fake.url, headers={"x-api-key": KEY}, max_connections=4)
        body = b'{"model":"m","messages":[{"role":"user","content":"k"}]}'
        for _ in range(5):
            answer = await client.post("/v1/messages", body)
            assert answer.status == 200 and b"echo: k" in answer.content
        assert client.connections == 1
        assert fake.calls[0].headers["x-api-key"] == KEY
        # The server drops every idle connection: the next request goes out once more on a new one.
        fake.drop_idle()
        await asyncio.sleep(0.05)
        assert (await client.post("/v1/messages", body)).status == 200
        assert len(fake.calls) == 6
        await client.aclose()


async def test_client_reads_chunked_answers_and_rejects_header_injection() -> None:
    with FakeUpstream() as fake:
        fake.chunked = True
        client = HTTPClient(fake.url)
        answer = await client.post("/v1/messages", b'{"messages":[{"role":"user","content":"c"}]}')
        assert answer.status == 200 and b"echo: c" in answer.content
        with pytest.raises(ValueError, match="forbidden"):
            await client.post("/v1/messages", b"{}", {"anthropic-beta": "a\r\nx-evil: 1"})
        await client.aclose()
    with pytest.raises(ValueError, match="forbidden"):
        HTTPClient("http://127.0.0.1:1", headers={"x-api-key": "k\n"})


def ask(text: str) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": text}]}


def text_of(message: dict[str, Any]) -> str:
    return str(message["content"][0]["text"])


async def test_client_sends_once_more_when_a_kept_connection_dies_unanswered() -> None:
    with FakeUpstream() as fake:
        backend = AnthropicBackend("up", fake.url, concurrency=4)
        assert text_of(await backend.create_message(ask("warm"), CallContext())) == "echo: warm"
        # The kept connection dies before any answer (the server closed it as the request went
        # out): the request goes out once more, on a new connection, and the caller sees nothing.
        fake.plan("stale", ["reset"])
        assert text_of(await backend.create_message(ask("stale"), CallContext())) == "echo: stale"
        assert len(fake.calls_for("stale")) == 2 and fake.connections == 2
        # Once only: the second attempt's fault is the request's.
        fake.plan("twice", ["reset", "reset"])
        with pytest.raises(MsgbatchError) as caught:
            await backend.create_message(ask("twice"), CallContext())
        assert caught.value.type == "api_error" and caught.value.retryable
        assert len(fake.calls_for("twice")) == 2 and fake.connections == 3
        # On a new connection, a dropped request is not sent again here (the retry budget decides).
        fake.plan("fresh", ["reset"])
        with pytest.raises(MsgbatchError) as caught:
            await backend.create_message(ask("fresh"), CallContext())
        assert caught.value.type == "api_error" and caught.value.retryable
        assert len(fake.calls_for("fresh")) == 1 and fake.connections == 4
        await backend.aclose()
        with pytest.raises(MsgbatchError, match="cannot connect"):
            await backend.create_message(ask("warm"), CallContext())


async def test_client_faults_become_backend_errors() -> None:
    backend = AnthropicBackend("up", "http://127.0.0.1:9", timeout=1.0)  # nothing listens on port 9
    with pytest.raises(MsgbatchError) as caught:
        await backend.create_message({"model": "m", "messages": []}, CallContext())
    assert caught.value.type == "api_error" and caught.value.retryable
    assert "cannot connect" in caught.value.message
    await backend.aclose()
    cases = {
        "timeout": ("timeout_error", "did not answer within 0.3s"),
        "garbage": ("api_error", "answered with something that is not HTTP"),
        "truncated": ("api_error", "connection to upstream up failed"),
        "malformed": ("api_error", "answered with a malformed body"),
    }
    with FakeUpstream(hang=1.0) as fake:
        backend = AnthropicBackend("up", fake.url, timeout=0.3)
        assert text_of(await backend.create_message(ask("warm"), CallContext())) == "echo: warm"  # a kept connection
        for key, (error_type, message) in cases.items():
            fake.plan(key, [key])
            with pytest.raises(MsgbatchError) as caught:
                await backend.create_message(ask(key), CallContext())
            error = caught.value
            assert (error.type, error.retryable, error.upstream_status) == (error_type, True, None), key
            assert message in error.message, (key, error.message)
            assert len(fake.calls_for(key)) == 1, key  # none of these is sent again by the client
        await backend.aclose()


# --- the limiter ------------------------------------------------------------------------------


class Scripted:
    """The state of a MockBackend whose calls wait on a gate and then fail or succeed as told."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.failure: MsgbatchError | None = None
        self.in_flight = 0
        self.peak = 0
        self.backend = MockBackend(self.answer, name="scripted")

    async def answer(self, params: dict[str, Any], context: CallContext) -> dict[str, Any]:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await self.gate.wait()
            failure = self.failure
            if failure is not None:
                raise error_for_type(
                    failure.type,
                    failure.message,
                    retryable=failure.retryable,
                    retry_after=failure.retry_after,
                    upstream_status=failure.upstream_status,
                )
            return {"ok": True}
        finally:
            self.in_flight -= 1


async def test_limiter_bounds_concurrency_and_cuts_once_per_generation() -> None:
    inner = Scripted()
    limiter = AdaptiveLimiter(inner.backend, 10, min_limit=2)
    calls = [asyncio.create_task(limiter.create_message({}, CallContext())) for _ in range(30)]
    await asyncio.sleep(0.01)
    assert inner.in_flight == 10 and limiter.waiting == 20
    inner.failure = error_for_type("overloaded_error", "busy", retryable=True, upstream_status=529)
    inner.gate.set()
    await asyncio.sleep(0)  # the ten in flight fail; the requests they let in must wait again
    inner.gate.clear()
    await asyncio.sleep(0.01)
    assert inner.in_flight == 7
    # The first ten all failed under the old limit: one cut, not ten.
    assert limiter.limit == 7
    inner.failure = None
    inner.gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert sum(isinstance(r, MsgbatchError) for r in results) >= 10
    assert inner.peak == 10 and limiter.in_flight == 0
    # Successes grow it back, additively, up to the ceiling and no further.
    for _ in range(200):
        await limiter.create_message({}, CallContext())
    assert limiter.limit == 10


async def test_limiter_never_goes_below_its_floor_and_ignores_other_errors() -> None:
    inner = Scripted()
    inner.gate.set()
    limiter = AdaptiveLimiter(inner.backend, 8, min_limit=3)
    inner.failure = error_for_type("api_error", "boom", retryable=True, upstream_status=500)
    with pytest.raises(MsgbatchError):
        await limiter.create_message({}, CallContext())
    assert limiter.limit == 8
    inner.failure = error_for_type("rate_limit_error", "slow down", retryable=True, upstream_status=429)
    for _ in range(10):
        with pytest.raises(MsgbatchError):
            await limiter.create_message({}, CallContext())
    assert limiter.limit == 3
    fixed = AdaptiveLimiter(inner.backend, 8, adaptive=False)
    with pytest.raises(MsgbatchError):
        await fixed.create_message({}, CallContext())
    assert fixed.limit == 8


async def test_limiter_holds_every_request_back_for_a_retry_after() -> None:
    inner = Scripted()
    inner.gate.set()
    limiter = AdaptiveLimiter(inner.backend, 4)
    inner.failure = error_for_type(
        "rate_limit_error", "slow down", retryable=True, retry_after=0.3, upstream_status=429
    )
    with pytest.raises(MsgbatchError):
        await limiter.create_message({}, CallContext())
    inner.failure = None
    start = time.monotonic()
    await asyncio.gather(*(limiter.create_message({}, CallContext()) for _ in range(3)))
    assert time.monotonic() - start >= 0.28
    start = time.monotonic()
    await limiter.create_message({}, CallContext())
    assert time.monotonic() - start < 0.1  # the pause is over
    capped = AdaptiveLimiter(inner.backend, 4, max_pause=0.05)
    inner.failure = error_for_type("overloaded_error", "x", retryable=True, retry_after=3600, upstream_status=529)
    with pytest.raises(MsgbatchError):
        await capped.create_message({}, CallContext())
    inner.failure = None
    start = time.monotonic()
    await capped.create_message({}, CallContext())
    assert time.monotonic() - start < 0.5


async def test_limiter_drops_a_waiting_request_whose_batch_was_canceled() -> None:
    inner = Scripted()
    limiter = AdaptiveLimiter(inner.backend, 1)
    canceled = False

    async def call(flag: bool) -> dict[str, Any]:
        if flag:
            request_canceled.set(lambda: canceled)
        return await limiter.create_message({}, CallContext())

    first = asyncio.create_task(call(False))
    second = asyncio.create_task(call(True))
    await asyncio.sleep(0.01)
    assert limiter.waiting == 1
    canceled = True
    inner.gate.set()
    assert await first == {"ok": True}
    with pytest.raises(RequestCanceled):
        await second
    assert limiter.in_flight == 0


async def test_limiter_waiter_cancelled_frees_nothing_twice() -> None:
    inner = Scripted()
    limiter = AdaptiveLimiter(inner.backend, 1)
    first = asyncio.create_task(limiter.create_message({}, CallContext()))
    waiting = asyncio.create_task(limiter.create_message({}, CallContext()))
    await asyncio.sleep(0.01)
    waiting.cancel()
    await asyncio.sleep(0.01)
    inner.gate.set()
    await first
    assert limiter.in_flight == 0 and limiter.waiting == 0
    assert await limiter.create_message({}, CallContext()) == {"ok": True}


# --- configuration ----------------------------------------------------------------------------


def router_from(tmp_path: Path, raw: dict[str, Any], env: dict[str, str] | None = None, **settings: Any) -> Any:
    return build_router(make_settings(tmp_path, **raw, **settings), env or {})


def test_nothing_configured_is_the_simulator(tmp_path: Path) -> None:
    router = router_from(tmp_path, {})
    assert isinstance(router.default, SimulatorBackend) and router.routes == []


def test_backends_routes_and_default(tmp_path: Path) -> None:
    raw = {
        "default_backend": "sim",
        "backends": [
            {"name": "vllm", "type": "anthropic", "url": "http://127.0.0.1:8000", "concurrency": 32},
            {
                "name": "tgi",
                "type": "openai",
                "url": "http://127.0.0.1:8080/v1",
                "api_key_env": "TGI_KEY",
                "timeout": "2m",
                "max_attempts": 3,
                "backoff": "250ms",
                "backoff_cap": "5s",
                "model": "served-name",
            },
            {"name": "sim", "type": "simulate", "latency": "10ms"},
        ],
        "routes": [
            {"pattern": "llama-*", "backend": "vllm"},
            {"pattern": "mistral-*", "backend": "tgi"},
            {"pattern": "claude-*", "backend": "simulate"},
        ],
    }
    router = router_from(tmp_path, raw, {"TGI_KEY": KEY})
    vllm, tgi, sim = router.route("llama-3"), router.route("mistral-7b"), router.route("anything-else")
    assert isinstance(vllm, AdaptiveLimiter) and isinstance(vllm.inner.inner, AnthropicBackend)
    assert vllm.max_limit == 32 and vllm.inner.inner.name == "vllm"
    assert isinstance(tgi, AdaptiveLimiter) and isinstance(tgi.inner.inner, OpenAIBackend)
    assert tgi.inner.inner.timeout == 120.0 and tgi.inner.inner.model == "served-name"
    assert isinstance(tgi.retry, RetryPolicy) and (tgi.retry.max_attempts, tgi.retry.base, tgi.retry.cap) == (
        3,
        0.25,
        5.0,
    )
    assert isinstance(sim, SimulatorBackend) and sim.default_latency == 0.01 and sim.name == "sim"
    assert isinstance(router.route("claude-x"), SimulatorBackend)  # the built-in simulator
    assert KEY not in repr(tgi) and KEY not in repr(router.backends)
    assert router.capacity == 32 + 64
    assert router.dispatch_concurrency(16) == 192 and router.dispatch_concurrency(500) == 500


def test_routes_without_default_leave_models_unserved(tmp_path: Path) -> None:
    raw = {
        "backends": [{"name": "a", "type": "anthropic", "url": "http://127.0.0.1:8000"}],
        "routes": [{"pattern": "llama-*", "backend": "a"}],
    }
    router = router_from(tmp_path, raw)
    assert router.route("llama-1") is not None and router.route("gpt-4") is None
    # No routes at all: the first backend serves every model.
    assert router_from(tmp_path, {"backends": raw["backends"]}).route("gpt-4") is not None


def test_upstream_shortcut(tmp_path: Path) -> None:
    router = router_from(tmp_path, {}, {"MSGBATCH_UPSTREAM_API_KEY": KEY}, upstream="openai=http://127.0.0.1:8000")
    backend = router.route("any-model")
    assert isinstance(backend, AdaptiveLimiter) and isinstance(backend.inner.inner, OpenAIBackend)
    assert backend.inner.inner.base_url == "http://127.0.0.1:8000/v1"  # a bare host gets /v1
    assert backend.max_limit == 256  # --concurrency
    assert backend.name == "127.0.0.1:8000"  # named after where it is, so logs and metrics say which
    router = router_from(tmp_path, {}, upstream="anthropic=http://127.0.0.1:8000/v1", concurrency=8)
    assert router.default.inner.inner.base_url == "http://127.0.0.1:8000" and router.default.max_limit == 8
    assert parse_upstream("anthropic=http://h:1") == ("anthropic", "http://h:1")
    for bad in ("http://h:1", "grpc=http://h:1", "openai="):
        with pytest.raises(ConfigError):
            parse_upstream(bad)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"backends": [{"type": "openai", "url": "http://h"}]}, "name: required"),
        ({"backends": [{"name": "a", "type": "grpc"}]}, "type: expected one of"),
        ({"backends": [{"name": "a", "type": "openai"}]}, "url: required"),
        ({"backends": [{"name": "a", "type": "openai", "url": "ftp://h"}]}, "not an http"),
        ({"backends": [{"name": "a", "type": "openai", "url": "http://h", "concurency": 3}]}, "unknown key"),
        ({"backends": [{"name": "a", "type": "openai", "url": "http://h", "concurrency": 0}]}, "integer >= 1"),
        ({"backends": [{"name": "a", "type": "openai", "url": "http://h", "api_key_env": "NOPE"}]}, "NOPE is not set"),
        ({"backends": [{"name": "a", "type": "anthropic", "url": "http://h", "auth": "basic"}]}, "auth"),
        ({"backends": [{"name": "a", "type": "openai", "url": "http://h", "client": "curl"}]}, "one of builtin, httpx"),
        ({"backends": [{"name": "a", "type": "simulate"}, {"name": "a", "type": "simulate"}]}, "declared twice"),
        ({"backends": [{"name": "a", "type": "simulate"}], "routes": [{"pattern": "*", "backend": "b"}]}, "no backend"),
        ({"backends": [{"name": "a", "type": "simulate"}], "default_backend": "zz"}, "no backend named 'zz'"),
        ({"backends": [{"name": "a", "type": "simulate"}], "routes": [{"backend": "a"}]}, "pattern: required"),
    ],
)
def test_config_errors(tmp_path: Path, raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        router_from(tmp_path, raw)


def test_config_file_and_cli_flag(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from msgbatch.cli import main

    result = CliRunner().invoke(main, ["serve", "--upstream", "grpc=http://h", "--database", str(tmp_path / "x.db")])
    assert result.exit_code == 2 and "expected anthropic=URL or openai=URL" in result.output
    assert "--upstream TYPE=URL" in CliRunner().invoke(main, ["serve", "--help"]).output
