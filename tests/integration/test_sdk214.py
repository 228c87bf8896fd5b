"""The current SDK (`anthropic` 2.14) against msgbatch: its request shapes (mid-conversation system
messages, structured outputs, effort, beta compaction and threads), hosted parity under
`strict_batch_params`, and what upstreams say (stop reasons, stop sequences, API versions), on the
simulator and through both HTTP backends against the fake upstream, with the SDK's strict response
validation on and every results line parsed strictly as the SDK's result model (the beta twin for
beta batches)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, get_args

import anthropic
import httpx2
import jsonschema
import pydantic
import pytest
from anthropic.types import Message, StopReason
from anthropic.types.beta import BetaMessage, BetaStopReason
from anthropic.types.beta.messages import BetaMessageBatchIndividualResponse
from anthropic.types.messages import MessageBatchIndividualResponse

from conftest import TEST_KEY, ThreadedServer, async_client_for, make_settings, raw_client, running_server, wait_ended
from fake_upstream import FakeUpstream, anthropic_answer, chat_answer
from msgbatch.api.app import MsgBatchServer
from msgbatch.backends.anthropic import BETA_STOP_REASONS, STOP_REASONS, AnthropicBackend
from msgbatch.backends.base import CallContext
from msgbatch.backends.config import build_router
from msgbatch.config import Settings

MODEL = "claude-sonnet-4-5-20250929"
KINDS = ["simulate", "anthropic", "openai"]
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "population": {"type": "integer", "minimum": 0},
        "landmarks": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
    "required": ["city", "population", "landmarks"],
    "additionalProperties": False,
}
QUESTION = "What is the capital of France?"


def req(custom_id: str, messages: list[dict[str, Any]] | None = None, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 256,
        "messages": messages or [{"role": "user", "content": f"{QUESTION} ({custom_id})"}],
    }
    body.update(params)
    return {"custom_id": custom_id, "params": body}


SYSTEM_GA = [
    {"role": "user", "content": "Hello"},
    {"role": "system", "content": "From now on, answer in French."},
    {"role": "assistant", "content": "D'accord."},
    {"role": "user", "content": "sys-ga: what now?"},
]
SYSTEM_BETA = [
    {"role": "user", "content": "Hello"},
    {"role": "system", "content": [{"type": "text", "text": "Only for this turn."}], "clear_at": "next_user_message"},
    {"role": "assistant", "content": "Hi."},
    {"role": "system", "content": "Stay brief.", "clear_at": "never", "output_config": {"effort": "low"}},
    {"role": "user", "content": "sys-beta: go on"},
    {"role": "system", "output_config": {"effort": "high"}},  # no content: the beta form allows it
]


def shapes(beta: bool) -> list[dict[str, Any]]:
    requests = [
        req("sys-ga", SYSTEM_GA),
        req("structured", output_config={"format": {"type": "json_schema", "schema": SCHEMA}, "effort": "medium"}),
        req("structured-old", output_format={"type": "json_schema", "schema": SCHEMA}),
        req("stop", [{"role": "user", "content": QUESTION}], stop_sequences=["capital"]),
    ]
    if beta:
        requests += [
            req("sys-beta", SYSTEM_BETA),
            req("compaction", compaction={"type": "summarize"}),
            req("thread", thread={"type": "create"}),
        ]
    return requests


# --- the fake upstream's answers --------------------------------------------------------------


PARIS = json.dumps({"city": "Paris", "population": 2, "landmarks": ["Louvre"]})


def messages_answer(body: dict[str, Any]) -> dict[str, Any]:
    answer = anthropic_answer(body)
    if body.get("output_format") or body.get("output_config", {}).get("format"):
        answer["content"] = [{"type": "text", "text": PARIS}]
    if body.get("compaction"):
        answer["content"] = [{"type": "compaction", "content": "A summary.", "signature": "c2ln"}]
        answer["stop_reason"] = "compaction"
    elif body.get("stop_sequences"):
        answer["stop_sequence"] = body["stop_sequences"][0]  # llama.cpp: end_turn + stop_sequence
    return answer


def chat_completion_answer(body: dict[str, Any]) -> dict[str, Any]:
    answer = chat_answer(body)
    choice = answer["choices"][0]
    if body.get("response_format"):
        choice["message"]["content"] = PARIS
    if body.get("stop"):
        choice["stop_reason"] = body["stop"][0]  # vLLM names the stop string that matched
    return answer


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        upstream.answer["/v1/messages"] = messages_answer
        upstream.answer["/v1/chat/completions"] = chat_completion_answer
        yield upstream


def settings_for(kind: str, tmp_path: Path, fake: FakeUpstream, **overrides: Any) -> Settings:
    if kind == "simulate":
        return make_settings(tmp_path, **overrides)
    url = fake.url if kind == "anthropic" else fake.url + "/v1"
    table = {"name": "up", "type": kind, "url": url, "timeout": "5s", "max_attempts": 1}
    return make_settings(tmp_path, backends=[table], **overrides)


@contextlib.asynccontextmanager
async def msgbatch_on(kind: str, tmp_path: Path, fake: FakeUpstream, **overrides: Any) -> AsyncIterator[MsgBatchServer]:
    settings = settings_for(kind, tmp_path, fake, **overrides)
    async with running_server(settings, router=build_router(settings, env={})) as srv:
        yield srv


# --- strict reading of results lines ----------------------------------------------------------


def _no_extras(value: object, path: str = "") -> None:
    """The SDK's models accept unknown keys; a misspelt field must not slip through."""
    if isinstance(value, pydantic.BaseModel):
        assert not value.model_extra, f"unexpected keys at {path or 'top'}: {value.model_extra}"
        for name in type(value).model_fields:
            _no_extras(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _no_extras(item, f"{path}.{i}")


def parse_lines(raw: bytes, beta: bool) -> dict[str, Any]:
    model = BetaMessageBatchIndividualResponse if beta else MessageBatchIndividualResponse
    parsed = {}
    for line in raw.splitlines():
        result = model.model_validate(json.loads(line), strict=True)
        if result.result.type == "succeeded":
            _no_extras(result.result.message)
        parsed[result.custom_id] = result.result
    return parsed


async def run_async(client: anthropic.AsyncAnthropic, srv: MsgBatchServer, requests: list[Any], beta: bool) -> Any:
    if beta:
        batch = await client.beta.messages.batches.create(requests=requests, betas=["compact-2026-01-12"])
    else:
        batch = await client.messages.batches.create(requests=requests)
    ended = await wait_ended(client, batch.id)
    assert ended.request_counts.processing == 0
    # The SDK's own results() reads every line back.
    reader = client.beta.messages.batches if beta else client.messages.batches
    assert sorted([r.custom_id async for r in await reader.results(batch.id)]) == sorted(
        r["custom_id"] for r in requests
    )
    async with raw_client(srv) as http:
        resp = await http.get(f"/v1/messages/batches/{batch.id}/results", headers={"x-api-key": TEST_KEY})
    return parse_lines(resp.content, beta)


def text(result: Any) -> str:
    assert result.type == "succeeded", result
    return "".join(b.text for b in result.message.content if b.type == "text")


# --- the shapes, end to end -------------------------------------------------------------------


@pytest.mark.parametrize("beta", [False, True], ids=["standard", "beta"])
@pytest.mark.parametrize("kind", KINDS)
async def test_current_sdk_shapes(kind: str, beta: bool, tmp_path: Path, fake: FakeUpstream) -> None:
    requests = shapes(beta)
    async with msgbatch_on(kind, tmp_path, fake) as srv:
        client = async_client_for(srv)
        results = await run_async(client, srv, requests, beta)
        await client.close()

    # Structured outputs answer JSON valid against the schema (the simulator makes it from the schema).
    for cid in ("structured", "structured-old"):
        jsonschema.validate(json.loads(text(results[cid])), SCHEMA)
    # A matched stop sequence: the simulator's, llama.cpp's end_turn + stop_sequence, vLLM's stop_reason.
    stop = results["stop"].message
    assert (stop.stop_reason, stop.stop_sequence) == ("stop_sequence", "capital")

    if kind == "simulate":
        assert all(r.type == "succeeded" for r in results.values())
        assert text(results["sys-ga"]).startswith('Following the system prompt ("From now on, answer"), ')
        if beta:
            assert text(results["sys-beta"]).startswith('Following the system prompt ("Stay brief."), ')
    elif kind == "anthropic":
        assert all(r.type == "succeeded" for r in results.values())
        for call in fake.calls:  # passed through as sent: system messages in place
            sent = next(r["params"] for r in requests if r["params"]["messages"] == call.body["messages"])
            assert call.body == sent
        if beta:  # the upstream's stop_reason is kept, and its compaction block
            compaction = results["compaction"].message
            assert compaction.stop_reason == "compaction" and compaction.content[0].type == "compaction"
    else:
        sent = {c.key: c.body for c in fake.calls}
        assert sent["sys-ga: what now?"]["messages"] == [
            {"role": "user", "content": "Hello"},
            {"role": "system", "content": "From now on, answer in French."},
            {"role": "assistant", "content": "D'accord."},
            {"role": "user", "content": "sys-ga: what now?"},
        ]
        structured = sent[f"{QUESTION} (structured)"]
        assert structured["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": SCHEMA},
        }
        assert structured["reasoning_effort"] == "medium"
        assert sent[f"{QUESTION} (structured-old)"]["response_format"]["json_schema"]["schema"] == SCHEMA
        if beta:
            assert sent["sys-beta: go on"]["messages"] == [
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi."},
                {"role": "system", "content": "Stay brief."},
                {"role": "user", "content": "sys-beta: go on"},
            ]
            assert sent["sys-beta: go on"]["reasoning_effort"] == "high"
            # What a chat completion cannot carry ends errored, saying what, and never goes upstream.
            for cid in ("compaction", "thread"):
                error = results[cid].error.error
                assert error.type == "invalid_request_error"
                assert error.message.startswith(f"{cid}: {cid}") and "cannot be sent" in error.message
            assert len(fake.calls) == 5


@pytest.mark.parametrize("kind", KINDS)
def test_the_sync_client_standard_and_beta(kind: str, tmp_path: Path, fake: FakeUpstream) -> None:
    with ThreadedServer(settings_for(kind, tmp_path, fake)) as live:
        client = anthropic.Anthropic(
            api_key=TEST_KEY, base_url=live.base_url, _strict_response_validation=True, max_retries=0
        )
        for beta in (False, True):
            batches = client.beta.messages.batches if beta else client.messages.batches
            kwargs: dict[str, Any] = {"betas": ["mid-conversation-system-clear-at-2026-08-21"]} if beta else {}
            batch = batches.create(requests=shapes(beta)[:2], **kwargs)  # type: ignore[arg-type]
            while batch.processing_status != "ended":
                batch = batches.retrieve(batch.id)
            assert batch.id in [b.id for b in batches.list(limit=10)]
            assert batch.request_counts.succeeded == 2
            raw = httpx2.get(f"{live.base_url}/v1/messages/batches/{batch.id}/results", headers={"x-api-key": "k"})
            results = parse_lines(raw.content, beta)
            jsonschema.validate(json.loads(text(results["structured"])), SCHEMA)
            assert sorted(r.custom_id for r in batches.results(batch.id)) == ["structured", "sys-ga"]
        client.close()


# --- hosted parity: strict_batch_params -------------------------------------------------------

STRICT_CASES = [
    (req("speed", speed="fast"), "speed: fast mode is not supported in the Message Batches API"),
    (req("thread", thread={"type": "create"}), "thread: a thread (server-held conversation state) is not supported"),
    (req("hint", cache_hint={"ttl": "1h"}), "cache_hint: this research-preview flag is not supported"),
    (
        req("budget", thinking={"type": "enabled", "budget_tokens": 512}),
        "thinking.budget_tokens: Input should be greater than or equal to 1024",
    ),
    (
        req("billing", billing_policy={"type": "billing_policy", "bill_to": "user_profile"}),
        "billing_policy.bill_to: billing a user profile is not supported",
    ),
]


@pytest.mark.parametrize("beta", [False, True], ids=["standard", "beta"])
@pytest.mark.parametrize("strict", [True, False], ids=["strict", "default"])
async def test_strict_batch_params(strict: bool, beta: bool, tmp_path: Path, fake: FakeUpstream) -> None:
    requests = [r for r, _ in STRICT_CASES] + [req("fine", thinking={"type": "enabled", "budget_tokens": 1024})]
    async with msgbatch_on("simulate", tmp_path, fake, strict_batch_params=strict) as srv:
        client = async_client_for(srv)
        results = await run_async(client, srv, requests, beta)
        await client.close()
    assert results["fine"].type == "succeeded"
    for request, message in STRICT_CASES:
        result = results[request["custom_id"]]
        if strict:
            assert result.type == "errored" and result.error.error.type == "invalid_request_error"
            assert result.error.error.message.startswith(message), result.error.error.message
        else:  # off by default: local models don't care
            assert result.type == "succeeded", result


# --- found by fuzzing: reported, not crashed on -----------------------------------------------


async def test_odd_types_end_errored_naming_the_field_without_a_traceback(
    tmp_path: Path, fake: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    requests = [
        req("role-object", [{"role": {"name": "user"}, "content": "Hi"}]),
        req("role-list", [{"role": ["user"], "content": "Hi"}]),
        req("tool-choice", tool_choice={"type": {"auto": True}}),
        req("thinking", thinking={"type": ["enabled"]}),
    ]
    caplog.set_level(logging.INFO)
    async with msgbatch_on("simulate", tmp_path, fake) as srv:
        client = async_client_for(srv)
        results = await run_async(client, srv, requests, beta=False)
        await client.close()
    expected = {
        "role-object": "messages.0.role: Input should be 'user', 'assistant' or 'system'",
        "role-list": "messages.0.role: Input should be 'user', 'assistant' or 'system'",
        "tool-choice": "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'",
        "thinking": "thinking.type: Input should be 'enabled', 'disabled', 'adaptive' or 'between_tools'",
    }
    for cid, message in expected.items():
        assert results[cid].type == "errored"
        assert (results[cid].error.error.type, results[cid].error.error.message) == ("invalid_request_error", message)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# --- the anthropic backend: versions, forwarded headers, what the upstream said ----------------


async def call(backend: AnthropicBackend, params: dict[str, Any], context: CallContext) -> dict[str, Any]:
    try:
        return await backend.create_message(params, context)
    finally:
        await backend.aclose()


PARAMS = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}


@pytest.mark.parametrize(
    ("pin", "headers", "batch_version", "sent"),
    [
        (None, None, "2026-10-21", "2026-10-21"),  # the batch's own version goes upstream
        (None, None, "2023-06-01", "2023-06-01"),
        (None, None, None, "2023-06-01"),  # the client sent none (curl)
        ("2023-06-01", None, "2026-10-21", "2023-06-01"),  # the configuration pins one
        (None, {"Anthropic-Version": "2023-06-01"}, "2026-10-21", "2023-06-01"),  # pinned through headers
    ],
)
async def test_the_batch_version_goes_upstream_unless_pinned(
    fake: FakeUpstream, pin: str | None, headers: dict[str, str] | None, batch_version: str | None, sent: str
) -> None:
    backend = AnthropicBackend("up", fake.url, anthropic_version=pin, headers=headers)
    await call(backend, PARAMS, CallContext(anthropic_version=batch_version))
    assert fake.calls[-1].headers["anthropic-version"] == sent


async def test_version_pin_comes_from_the_configuration_only_when_set(tmp_path: Path, fake: FakeUpstream) -> None:
    tables = [
        {"name": "free", "type": "anthropic", "url": fake.url},
        {"name": "pinned", "type": "anthropic", "url": fake.url, "anthropic_version": "2023-06-01"},
    ]
    routes = [{"pattern": "free-*", "backend": "free"}, {"pattern": "pinned-*", "backend": "pinned"}]
    router = build_router(make_settings(tmp_path, backends=tables, routes=routes), env={})
    for name, sent in (("free", "2026-10-21"), ("pinned", "2023-06-01")):
        backend = router.route(f"{name}-model")
        assert backend is not None and backend.name == name
        await backend.create_message(dict(PARAMS), CallContext(anthropic_version="2026-10-21"))
        assert fake.calls[-1].headers["anthropic-version"] == sent
    await router.aclose()


async def test_user_profile_and_betas_are_forwarded(fake: FakeUpstream) -> None:
    context = CallContext(
        betas=("user-profiles-2026-09-04",),
        anthropic_version="2026-10-21",
        extra_headers={"anthropic-user-profile-id": "uprof_0123"},
    )
    await call(AnthropicBackend("up", fake.url, api_key="sk-up"), PARAMS, context)
    headers = fake.calls[-1].headers
    assert headers["anthropic-user-profile-id"] == "uprof_0123"
    assert headers["anthropic-beta"] == "user-profiles-2026-09-04"
    assert headers["anthropic-version"] == "2026-10-21" and headers["x-api-key"] == "sk-up"
    # Without the header nothing is invented.
    await call(AnthropicBackend("up", fake.url), PARAMS, CallContext())
    assert "anthropic-user-profile-id" not in fake.calls[-1].headers


def test_stop_reason_sets_are_the_sdks() -> None:
    """A new SDK release that adds a stop reason shows here: results lines may carry exactly these."""
    assert frozenset(get_args(StopReason)) == STOP_REASONS
    assert frozenset(get_args(BetaStopReason)) == BETA_STOP_REASONS


@pytest.mark.parametrize(
    ("answer", "beta", "reason", "sequence"),
    [
        ({"stop_reason": "compaction"}, True, "compaction", None),  # kept: a beta batch reads BetaMessage
        ({"stop_reason": "compaction"}, False, "end_turn", None),  # StopReason has no compaction
        ({"stop_reason": "model_context_window_exceeded"}, False, "model_context_window_exceeded", None),
        ({"stop_reason": "pause_turn"}, True, "pause_turn", None),
        ({"stop_reason": "refusal"}, False, "refusal", None),
        ({"stop_reason": "end_turn", "stop_sequence": "END"}, False, "stop_sequence", "END"),  # llama.cpp
        ({"stop_reason": "end_turn", "stop_sequence": ""}, False, "end_turn", None),
        ({"stop_reason": "stop_sequence", "stop_sequence": "END"}, True, "stop_sequence", "END"),
        ({"stop_reason": "max_tokens", "stop_sequence": "END"}, False, "max_tokens", None),
        ({"stop_reason": "length"}, False, "max_tokens", None),
        ({"stop_reason": "someday"}, True, "end_turn", None),
    ],
)
async def test_what_the_upstream_said_is_kept(
    fake: FakeUpstream, answer: dict[str, Any], beta: bool, reason: str, sequence: str | None
) -> None:
    fake.answer["/v1/messages"] = lambda body: {**anthropic_answer(body), "stop_sequence": None, **answer}
    context = CallContext(betas=("compact-2026-01-12",) if beta else ())
    message = await call(AnthropicBackend("up", fake.url), PARAMS, context)
    assert (message["stop_reason"], message["stop_sequence"]) == (reason, sequence)
    (BetaMessage if beta else Message).model_validate(message, strict=True)


# --- API versions, end to end: the create call's headers belong to the batch -------------------

OLD = {"anthropic-version": "2023-06-01"}


async def test_the_batch_version_and_user_profile_reach_the_anthropic_upstream(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    async with msgbatch_on("anthropic", tmp_path, fake) as srv:
        client = async_client_for(srv)
        current = await client.messages.batches.create(requests=[req("current")], user_profile_id="uprof_0123")
        old = await client.beta.messages.batches.create(requests=[req("old")], betas=["x-1"], extra_headers=OLD)
        for batch in (current, old):
            await wait_ended(client, batch.id)
        await client.close()
    sent = {c.key: c.headers for c in fake.calls}
    current_headers, old_headers = sent[f"{QUESTION} (current)"], sent[f"{QUESTION} (old)"]
    assert current_headers["anthropic-version"] == "2026-10-21"  # what anthropic 2.14 sends
    assert current_headers["anthropic-user-profile-id"] == "uprof_0123"
    assert old_headers["anthropic-version"] == "2023-06-01" and old_headers["anthropic-beta"] == "x-1"
    assert "anthropic-user-profile-id" not in old_headers


VERSIONED = [
    req("temperature", temperature=0.2),
    req(
        "assistant-document",
        [
            {"role": "user", "content": "Read this."},
            {"role": "assistant", "content": [{"type": "document", "source": {"type": "text", "data": "d"}}]},
            {"role": "user", "content": "Summarize it."},
        ],
    ),
    req(
        "user-citations",
        [{"role": "user", "content": [{"type": "text", "text": "As cited", "citations": [{"type": "x"}]}]}],
    ),
]


@pytest.mark.parametrize("beta", [False, True], ids=["standard", "beta"])
async def test_strict_mode_applies_each_batch_versions_rules(beta: bool, tmp_path: Path, fake: FakeUpstream) -> None:
    async with msgbatch_on("simulate", tmp_path, fake, strict_batch_params=True) as srv:
        client = async_client_for(srv)
        current = await run_async(client, srv, VERSIONED, beta)  # anthropic 2.14 sends 2026-10-21
        old_client = async_client_for(srv, default_headers=OLD)
        old = await run_async(old_client, srv, VERSIONED, beta)
        await client.close()
        await old_client.close()
    messages = {cid: r.error.error.message for cid, r in current.items() if r.type == "errored"}
    assert messages == {
        "temperature": "temperature: Extra inputs are not permitted",
        "assistant-document": "messages.1.content.0: a document block is not allowed in an assistant message "
        "under anthropic-version 2026-10-21; send documents in a user message",
        "user-citations": "messages.0.content.0.citations: citations are not allowed on a text block in a user "
        "message under anthropic-version 2026-10-21",
    }
    assert all(r.type == "succeeded" for r in old.values()), old  # accepted under 2023-06-01
