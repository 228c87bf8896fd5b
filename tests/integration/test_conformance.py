"""Conformance with the installed SDK's own request types.

The cases are derived from `MessageCreateParamsNonStreaming` and its beta twin: every top-level
field, every message role, every content block type and every tool type the SDK declares. Each
gets a hand-made example (the tables below) that is checked against the SDK's TypedDicts
(`sdk_problems`), and then:

- msgbatch's validation refuses none of them;
- each runs on the simulator, through the SDK with strict response validation, in a standard batch
  (standard types) or a beta batch (beta types), and every results line parses strictly as the
  SDK's result model;
- through the `openai` backend each either succeeds or, where a chat completion cannot express it,
  ends errored with an invalid_request_error naming it — exactly as the tables expect.

A field or type the SDK gains in a new release has no example yet: the first test fails naming it.
"""

from __future__ import annotations

import collections.abc
import json
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import pytest
import typing_extensions
from anthropic.types import message_create_params as standard_params
from anthropic.types.beta import message_create_params as beta_params
from anthropic.types.beta.messages import BetaMessageBatchIndividualResponse
from anthropic.types.messages import MessageBatchIndividualResponse

from conftest import TEST_KEY, async_client_for, make_settings, raw_client, running_server, wait_ended
from fake_upstream import FakeUpstream
from msgbatch.backends.config import build_router
from msgbatch.validation import validate_params

MODEL = "claude-sonnet-4-5-20250929"
APIS = {
    "standard": standard_params.MessageCreateParamsNonStreaming,
    "beta": beta_params.MessageCreateParamsNonStreaming,
}

# --- walking the SDK's types ------------------------------------------------------------------


def _hints(td: Any) -> dict[str, Any]:
    return typing.get_type_hints(td, include_extras=True)


def _strip(t: Any) -> Any:
    while typing.get_origin(t) in (typing_extensions.Required, typing_extensions.NotRequired, typing.Annotated):
        t = typing.get_args(t)[0]
    return t


def _members(t: Any) -> list[Any]:
    t = _strip(t)
    if typing.get_origin(t) is typing.Union:
        return [m for a in typing.get_args(t) for m in _members(a)]
    return [t]


def _literals(t: Any) -> list[str]:
    return [v for m in _members(t) if typing.get_origin(m) is typing.Literal for v in typing.get_args(m)]


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, pydantic.BaseModel)


def _type_of(member: Any) -> list[str]:
    """The `type` literals of a block or tool TypedDict (or a response model sent back)."""
    return _literals(member.model_fields["type"].annotation if _is_model(member) else _hints(member)["type"])


def _item_type(t: Any) -> Any:
    return typing.get_args(_strip(t))[0]


def sdk_fields(api: str) -> set[str]:
    return set(_hints(APIS[api]))


def sdk_roles(api: str) -> dict[str, Any]:
    """role -> that message's TypedDict."""
    return {_literals(_hints(m)["role"])[0]: m for m in _members(_item_type(_hints(APIS[api])["messages"]))}


def sdk_block_types(api: str) -> set[str]:
    found: set[str] = set()
    for message in sdk_roles(api).values():
        for content in _members(_hints(message).get("content")):
            if typing.get_origin(content) is collections.abc.Iterable:
                for block in _members(_item_type(content)):
                    found.update(_type_of(block))
    return found


def sdk_tool_types(api: str) -> set[str]:
    types: set[str] = set()
    for tool in _members(_item_type(_hints(APIS[api])["tools"])):
        types.update(_type_of(tool))
    return types


def sdk_problems(value: Any, annotation: Any, path: str = "params") -> list[str]:
    """Why `value` is not a valid `annotation` (a TypedDict tree): unknown keys included."""
    t = _strip(annotation)
    origin = typing.get_origin(t)
    if t is object or t is Any:
        return []
    if origin is typing.Union:
        tries = [sdk_problems(value, a, path) for a in typing.get_args(t)]
        return [] if any(not p for p in tries) else min(tries, key=len)
    if origin is typing.Literal:
        return [] if value in typing.get_args(t) else [f"{path}: {value!r} is not one of {typing.get_args(t)}"]
    if t is type(None):
        return [] if value is None else [f"{path}: expected null"]
    if t in (str, bool):
        return [] if isinstance(value, t) else [f"{path}: expected {t.__name__}"]
    if t in (int, float):
        ok = isinstance(value, int | float if t is float else int) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected {t.__name__}"]
    if origin in (list, collections.abc.Iterable, collections.abc.Sequence) or getattr(origin, "__name__", "") == (
        "SequenceNotStr"
    ):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [p for i, v in enumerate(value) for p in sdk_problems(v, typing.get_args(t)[0], f"{path}.{i}")]
    if origin is dict or t is dict:
        return [] if isinstance(value, dict) else [f"{path}: expected an object"]
    if _is_model(t):
        try:
            t.model_validate(value, strict=True)
        except pydantic.ValidationError as exc:
            return [f"{path}: {exc.errors()[0]['msg']}"]
        return []
    if typing_extensions.is_typeddict(t):
        if not isinstance(value, dict):
            return [f"{path}: expected an object ({t.__name__})"]
        hints = _hints(t)
        if t.__total__:
            required = {k for k, v in hints.items() if typing.get_origin(v) is not typing_extensions.NotRequired}
        else:
            required = {k for k, v in hints.items() if typing.get_origin(v) is typing_extensions.Required}
        found = [f"{path}.{k}: required by {t.__name__}" for k in sorted(required - set(value))]
        found += [f"{path}.{k}: not a field of {t.__name__}" for k in sorted(set(value) - set(hints))]
        for key, item in value.items():
            if key in hints:
                found += sdk_problems(item, hints[key], f"{path}.{key}")
        return found
    return [f"{path}: cannot check {t!r}"]


# --- the hand-made examples -------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    params: dict[str, Any]  # merged into the base request
    openai: str | None = None  # None: translated; else a part of the errored message, naming it


def _field(value: Any, openai: str | None = None, **extra: Any) -> Example:
    return Example({"__field__": value, **extra}, openai)


SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"name": "get_weather", "description": "The weather", "input_schema": SCHEMA}

FIELDS: dict[str, Example] = {
    "model": _field(MODEL),
    "max_tokens": _field(512),
    "messages": _field([{"role": "user", "content": "Hello"}]),
    "stream": _field(False),
    "system": _field([{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]),
    "metadata": _field({"user_id": "user-1"}),
    "stop_sequences": _field(["END"]),
    "thinking": _field({"type": "enabled", "budget_tokens": 1024, "display": "summarized"}, max_tokens=2048),
    "tools": _field([WEATHER]),
    "tool_choice": _field({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}, tools=[WEATHER]),
    "output_config": _field({"effort": "low", "format": {"type": "json_schema", "schema": SCHEMA}}),
    "cache_control": _field({"type": "ephemeral"}),
    "container": _field("container_011", "container: container cannot be sent"),
    "diagnostics": _field({"previous_message_id": None}),
    "inference_geo": _field("us"),
    "service_tier": _field("auto"),
    "speed": _field("standard"),
    "user_profile_id": _field("uprof_011"),
    "workspace_id": _field("wrkspc_011"),
    # beta only
    "betas": _field(["compact-2026-01-12"]),
    "billing_policy": _field({"type": "billing_policy", "bill_to": "self"}),
    "compaction": _field({"type": "summarize", "instructions": "Keep names."}, "compaction: compaction"),
    "context_management": _field(
        {"edits": [{"type": "clear_tool_uses_20250919"}]}, "context_management: context_management"
    ),
    "fallback_credit_token": _field("fct_011"),
    "fallbacks": _field("default"),
    "mcp_servers": _field(
        [{"type": "url", "url": "https://mcp.example.com/sse", "name": "example"}], "mcp_servers: mcp_servers"
    ),
    "thread": _field({"type": "continue", "previous_message_id": "msg_011"}, "thread: thread"),
}

HI = {"role": "user", "content": "Hello"}
GO_ON = {"role": "user", "content": "Go on"}


def _user(block: dict[str, Any], openai: str | None = None) -> Example:
    return Example({"messages": [{"role": "user", "content": [block, {"type": "text", "text": "Go on"}]}]}, openai)


def _assistant(block: dict[str, Any], openai: str | None = None) -> Example:
    return Example({"messages": [HI, {"role": "assistant", "content": [block]}, GO_ON]}, openai)


def _server_result(block_type: str, content: Any) -> Example:
    block = {"type": block_type, "tool_use_id": "srvtoolu_011", "content": content}
    return _assistant(block, f"messages.1.content.0: a {block_type} block cannot be sent")


TOOL_USE = {"type": "tool_use", "id": "toolu_011", "name": "get_weather", "input": {"city": "Paris"}}
TOOL_RESULT = {"type": "tool_result", "tool_use_id": "toolu_011", "content": "Sunny", "is_error": False}
TOOL_ROUND = [HI, {"role": "assistant", "content": [TOOL_USE]}, {"role": "user", "content": [TOOL_RESULT]}]
TEXT_DOC = {"type": "text", "media_type": "text/plain", "data": "The sky is blue."}


def _tool_change(block_type: str) -> Example:
    """A mid-conversation tool change, in a system message (beta)."""
    block = {"type": block_type, "tool": {"type": "tool_reference", "name": "get_weather"}}
    messages = [HI, {"role": "system", "content": [block]}]
    return Example({"messages": messages, "tools": [WEATHER]}, f"messages.1.content.0: a {block_type} block")


BLOCKS: dict[str, Example] = {
    "text": _user({"type": "text", "text": "Look.", "citations": None}),
    "image": _user({"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}),
    "document": _user(
        {"type": "document", "source": TEXT_DOC, "title": "Sky", "citations": {"enabled": True}},
        "messages.0.content.0: a document block cannot be sent",
    ),
    "search_result": _user(
        {
            "type": "search_result",
            "source": "https://example.com/sky",
            "title": "Sky",
            "content": [{"type": "text", "text": "The sky is blue."}],
        },
        "messages.0.content.0: a search_result block cannot be sent",
    ),
    "thinking": _assistant({"type": "thinking", "thinking": "Let me see.", "signature": "c2ln"}),
    "redacted_thinking": _assistant({"type": "redacted_thinking", "data": "ZW5j"}),
    "tool_use": Example({"messages": TOOL_ROUND, "tools": [WEATHER]}),
    "tool_result": Example({"messages": TOOL_ROUND, "tools": [WEATHER]}),
    "server_tool_use": _assistant(
        {"type": "server_tool_use", "id": "srvtoolu_011", "name": "web_search", "input": {"query": "sky"}},
        "messages.1.content.0: a server_tool_use block cannot be sent",
    ),
    "web_search_tool_result": _server_result(
        "web_search_tool_result",
        [{"type": "web_search_result", "url": "https://example.com", "title": "Ex", "encrypted_content": "ZW5j"}],
    ),
    "web_fetch_tool_result": _server_result(
        "web_fetch_tool_result",
        {"type": "web_fetch_result", "url": "https://example.com", "content": {"type": "document", "source": TEXT_DOC}},
    ),
    "code_execution_tool_result": _server_result(
        "code_execution_tool_result",
        {"type": "code_execution_result", "stdout": "4\n", "stderr": "", "return_code": 0, "content": []},
    ),
    "bash_code_execution_tool_result": _server_result(
        "bash_code_execution_tool_result",
        {"type": "bash_code_execution_result", "stdout": "ok", "stderr": "", "return_code": 0, "content": []},
    ),
    "text_editor_code_execution_tool_result": _server_result(
        "text_editor_code_execution_tool_result",
        {"type": "text_editor_code_execution_view_result", "content": "print(1)", "file_type": "text"},
    ),
    "tool_search_tool_result": _server_result(
        "tool_search_tool_result",
        {"type": "tool_search_tool_search_result", "tool_references": [{"type": "tool_reference", "tool_name": "x"}]},
    ),
    "container_upload": _user(
        {"type": "container_upload", "file_id": "file_011"}, "messages.0.content.0: a container_upload block"
    ),
    # beta only
    "advisor_tool_result": _server_result(
        "advisor_tool_result", {"type": "advisor_result", "text": "Consider the edge cases."}
    ),
    "mcp_tool_use": _assistant(
        {"type": "mcp_tool_use", "id": "mcptoolu_011", "name": "lookup", "server_name": "example", "input": {}},
        "messages.1.content.0: a mcp_tool_use block cannot be sent",
    ),
    "mcp_tool_result": _user(
        {"type": "mcp_tool_result", "tool_use_id": "mcptoolu_011", "content": "42", "is_error": False},
        "messages.0.content.0: a mcp_tool_result block cannot be sent",
    ),
    "compaction": _user(
        {"type": "compaction", "content": "Earlier: the user asked about the sky.", "signature": "c2ln"},
        "messages.0.content.0: a compaction block cannot be sent",
    ),
    "tool_addition": _tool_change("tool_addition"),
    "tool_removal": _tool_change("tool_removal"),
    "mcp_tool_listing": _assistant(
        {"type": "mcp_tool_listing", "mcp_server_name": "example", "tools": [{"name": "lookup", "input_schema": {}}]},
        "messages.1.content.0: a mcp_tool_listing block cannot be sent",
    ),
    "fallback": _assistant(
        {"type": "fallback", "from": {"model": MODEL}, "to": {"model": "claude-haiku-4-5"}},
        "messages.1.content.0: a fallback block cannot be sent",
    ),
}

ROLES: dict[str, Example] = {
    "user": Example({"messages": [HI]}),
    "assistant": Example({"messages": [HI, {"role": "assistant", "content": "Hi! What"}]}),
    "system": Example(
        {"messages": [HI, {"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Why?"}]}
    ),
}
# The beta form adds clear_at and a per-message output_config, and may leave content out.
BETA_SYSTEM = Example(
    {
        "messages": [
            HI,
            {"role": "system", "content": "Now.", "clear_at": "next_user_message", "output_config": {"effort": "low"}},
            {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": "Why?"},
            {"role": "system", "output_config": {"effort": "high"}},
        ]
    }
)


def _server_tool(tool_type: str, name: str, **extra: Any) -> Example:
    return Example({"tools": [{"type": tool_type, "name": name, **extra}]}, f"tools.0: the server tool {tool_type}")


def _toolset(tool_type: str, **extra: Any) -> Example:
    return Example({"tools": [{"type": tool_type, **extra}]}, f"tools.0: the server tool {tool_type}")


COMPUTER = {"display_width_px": 1280, "display_height_px": 800}
TOOLS: dict[str, Example] = {
    "custom": Example({"tools": [{**WEATHER, "type": "custom", "strict": True}]}),
    "bash_20241022": _server_tool("bash_20241022", "bash"),
    "bash_20250124": _server_tool("bash_20250124", "bash"),
    "code_execution_20250522": _server_tool("code_execution_20250522", "code_execution"),
    "code_execution_20250825": _server_tool("code_execution_20250825", "code_execution"),
    "code_execution_20260120": _server_tool("code_execution_20260120", "code_execution"),
    "code_execution_20260521": _server_tool("code_execution_20260521", "code_execution"),
    "browser_toolset_20260801": _toolset("browser_toolset_20260801"),
    "computer_toolset_20260801": _toolset("computer_toolset_20260801"),
    "computer_20241022": _server_tool("computer_20241022", "computer", **COMPUTER),
    "computer_20250124": _server_tool("computer_20250124", "computer", **COMPUTER),
    "computer_20251124": _server_tool("computer_20251124", "computer", **COMPUTER),
    "memory_20250818": _server_tool("memory_20250818", "memory"),
    "text_editor_20241022": _server_tool("text_editor_20241022", "str_replace_editor"),
    "text_editor_20250124": _server_tool("text_editor_20250124", "str_replace_editor"),
    "text_editor_20250429": _server_tool("text_editor_20250429", "str_replace_based_edit_tool"),
    "text_editor_20250728": _server_tool("text_editor_20250728", "str_replace_based_edit_tool"),
    "web_search_20250305": _server_tool("web_search_20250305", "web_search", max_uses=3),
    "web_search_20260209": _server_tool("web_search_20260209", "web_search"),
    "web_search_20260318": _server_tool("web_search_20260318", "web_search"),
    "web_fetch_20250910": _server_tool("web_fetch_20250910", "web_fetch"),
    "web_fetch_20260209": _server_tool("web_fetch_20260209", "web_fetch"),
    "web_fetch_20260309": _server_tool("web_fetch_20260309", "web_fetch"),
    "web_fetch_20260318": _server_tool("web_fetch_20260318", "web_fetch"),
    "tool_search_tool_bm25_20251119": _server_tool("tool_search_tool_bm25_20251119", "tool_search_tool_bm25"),
    "tool_search_tool_bm25": _server_tool("tool_search_tool_bm25", "tool_search_tool_bm25"),
    "tool_search_tool_regex_20251119": _server_tool("tool_search_tool_regex_20251119", "tool_search_tool_regex"),
    "tool_search_tool_regex": _server_tool("tool_search_tool_regex", "tool_search_tool_regex"),
    "advisor_20260301": _server_tool("advisor_20260301", "advisor", model="claude-opus-4-8"),
    "mcp_toolset": _toolset("mcp_toolset", mcp_server_name="example"),
}


@dataclass(frozen=True)
class Case:
    custom_id: str
    params: dict[str, Any]
    openai: str | None


def _request(name: str, example: Example) -> dict[str, Any]:
    params: dict[str, Any] = {"model": MODEL, "max_tokens": 512, "messages": [{"role": "user", "content": "Hello"}]}
    extra = dict(example.params)
    if "__field__" in extra:
        extra[name] = extra.pop("__field__")
    params.update(extra)
    return params


def cases(api: str) -> list[Case]:
    """One request per field, role, block type and tool type the SDK declares for this API."""
    found = [Case(f"field-{n}", _request(n, FIELDS[n]), FIELDS[n].openai) for n in sorted(sdk_fields(api))]
    found += [Case(f"role-{r}", _request(r, ROLES[r]), ROLES[r].openai) for r in sorted(sdk_roles(api))]
    if "clear_at" in _hints(sdk_roles(api)["system"]):
        found.append(Case("role-system-beta", _request("system", BETA_SYSTEM), None))
    found += [Case(f"block-{t}", _request(t, BLOCKS[t]), BLOCKS[t].openai) for t in sorted(sdk_block_types(api))]
    found += [Case(f"tool-{t}", _request(t, TOOLS[t]), TOOLS[t].openai) for t in sorted(sdk_tool_types(api))]
    return found


# --- the tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
def test_every_field_role_block_and_tool_of_the_sdk_has_an_example(api: str) -> None:
    """Fails on the first SDK release that adds one: give it an example (and an openai expectation)."""
    missing = [f"field {n}" for n in sorted(sdk_fields(api) - set(FIELDS))]
    missing += [f"role {r}" for r in sorted(set(sdk_roles(api)) - set(ROLES))]
    missing += [f"content block type {t}" for t in sorted(sdk_block_types(api) - set(BLOCKS))]
    missing += [f"tool type {t}" for t in sorted(sdk_tool_types(api) - set(TOOLS))]
    assert not missing, f"the installed SDK has {', '.join(missing)} without an example here"


def test_the_tables_hold_nothing_the_sdk_lacks() -> None:
    both = ("standard", "beta")
    assert set(FIELDS) <= set().union(*(sdk_fields(a) for a in both))
    assert set(BLOCKS) <= set().union(*(sdk_block_types(a) for a in both))
    assert set(TOOLS) <= set().union(*(sdk_tool_types(a) for a in both))


@pytest.mark.parametrize("api", APIS)
def test_every_example_is_a_valid_request_by_the_sdks_types(api: str) -> None:
    problems = {c.custom_id: p for c in cases(api) if (p := sdk_problems(c.params, APIS[api]))}
    assert not problems, json.dumps(problems, indent=1)


@pytest.mark.parametrize("api", APIS)
def test_validation_refuses_none(api: str) -> None:
    refused = {c.custom_id: p for c in cases(api) if (p := validate_params(c.params))}
    assert not refused, refused


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


async def run_cases(kind: str, api: str, tmp_path: Path, fake: FakeUpstream) -> dict[str, Any]:
    settings = make_settings(tmp_path)
    if kind == "openai":
        table = {"name": "up", "type": "openai", "url": fake.url + "/v1", "max_attempts": 1}
        settings = make_settings(tmp_path, backends=[table])
    requests = [{"custom_id": c.custom_id, "params": c.params} for c in cases(api)]
    async with running_server(settings, router=build_router(settings, env={})) as srv:
        client = async_client_for(srv)
        if api == "beta":
            batch = await client.beta.messages.batches.create(requests=requests, betas=["compact-2026-01-12"])  # type: ignore[arg-type]
        else:
            batch = await client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        ended = await wait_ended(client, batch.id)
        await client.close()
        async with raw_client(srv) as http:
            raw = (await http.get(f"/v1/messages/batches/{batch.id}/results", headers={"x-api-key": TEST_KEY})).content
    assert ended.request_counts.processing == 0
    model = BetaMessageBatchIndividualResponse if api == "beta" else MessageBatchIndividualResponse
    lines = [model.model_validate(json.loads(line), strict=True) for line in raw.splitlines()]
    assert len(lines) == len(requests)
    return {line.custom_id: line.result for line in lines}


@pytest.mark.parametrize("api", APIS)
async def test_every_case_runs_on_the_simulator(api: str, tmp_path: Path, fake: FakeUpstream) -> None:
    results = await run_cases("simulate", api, tmp_path, fake)
    failed = {cid: r.error.error.message for cid, r in results.items() if r.type != "succeeded"}
    assert not failed, failed


@pytest.mark.parametrize("api", APIS)
async def test_the_openai_translation_says_what_it_cannot_express(api: str, tmp_path: Path, fake: FakeUpstream) -> None:
    results = await run_cases("openai", api, tmp_path, fake)
    expected = {c.custom_id: c.openai for c in cases(api)}
    wrong = {}
    for cid, result in results.items():
        if expected[cid] is None:
            if result.type != "succeeded":
                wrong[cid] = f"expected to translate, got {result.error.error.message}"
        elif result.type != "errored" or result.error.error.type != "invalid_request_error":
            wrong[cid] = f"expected errored naming {expected[cid]!r}, got {result.type}"
        elif expected[cid] not in result.error.error.message:
            wrong[cid] = f"expected {expected[cid]!r} in {result.error.error.message!r}"
    assert not wrong, json.dumps(wrong, indent=1)
    # What cannot be translated never reached the upstream.
    assert len(fake.calls) == sum(1 for c in expected.values() if c is None)
