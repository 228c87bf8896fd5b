"""validate_params: the Messages API's checks on one batch request's params."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from msgbatch.validation import validate_params

MODEL = "claude-sonnet-4-5-20250929"


def base() -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 1024, "messages": [{"role": "user", "content": "Hello, world"}]}


def with_(**changes: Any) -> dict[str, Any]:
    params = base()
    params.update(changes)
    return params


def without(key: str) -> dict[str, Any]:
    params = base()
    del params[key]
    return params


# Params copied from the source documents (batches-sdk.md, beta-batches-sdk.md): their examples
# must run, including the ones the hosted API would refuse.
PDF_DATA = "JVBERi0xLjQK"
SPEC_EXAMPLES: list[dict[str, Any]] = [
    {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    },
    {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 2048,
        "thinking": {"type": "enabled"},
        "messages": [{"role": "user", "content": "Solve this problem..."}],
    },
    {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 2048,
        "web_search": {"type": "enabled"},
        "messages": [{"role": "user", "content": "What are the latest news?"}],
    },
    {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 4096,
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "messages": [{"role": "user", "content": "Complex reasoning task"}],
    },
    {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 2048,
        "citations": {"type": "enabled"},
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "document",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": PDF_DATA},
                    },
                    {"type": "text", "text": "Summarize with citations"},
                ],
            }
        ],
    },
    {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 4096,
        "thinking": {"type": "enabled"},
        "web_search": {"type": "enabled"},
        "code_execution": {"type": "enabled"},
        "messages": [{"role": "user", "content": "Research and code solution"}],
    },
]


@pytest.mark.parametrize("params", SPEC_EXAMPLES, ids=lambda p: next(iter(set(p) - {"model"}), "x"))
def test_spec_examples_pass(params: dict[str, Any]) -> None:
    assert validate_params(params) is None


OTHER_VALID: list[dict[str, Any]] = [
    with_(system="You are terse."),
    with_(system=[{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}]),
    with_(stream=False),
    with_(temperature=0),
    with_(temperature=0.7, top_p=0.9, top_k=40),
    with_(stop_sequences=[]),
    with_(stop_sequences=["\n\nHuman:", "END"]),
    with_(metadata={"user_id": "u-1"}),
    with_(thinking={"type": "disabled"}),
    with_(thinking={"type": "adaptive"}),
    with_(thinking={"type": "enabled", "budget_tokens": 1}),
    with_(tools=[]),
    with_(
        tools=[
            {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}},
            {"type": "custom", "name": "lookup", "input_schema": {"type": "object", "properties": {}}},
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
            {"type": "bash_20250124", "name": "bash"},
        ],
        tool_choice={"type": "tool", "name": "get_weather"},
    ),
    with_(tool_choice={"type": "auto"}),
    with_(tool_choice={"type": "any", "disable_parallel_tool_use": True}),
    with_(tool_choice={"type": "none"}),
    # Unknown keys pass untouched, whatever they hold.
    with_(service_tier="auto", container="c-1", anything={"nested": [1, 2]}, mcp_servers=[]),
    # An optional key sent as null counts as absent.
    with_(system=None, temperature=None, stop_sequences=None, tools=None, thinking=None, stream=None),
    with_(
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "42"},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                ],
            },
            {"role": "assistant", "content": "The answer is"},
        ]
    ),
]


@pytest.mark.parametrize("params", OTHER_VALID)
def test_valid_params_pass(params: dict[str, Any]) -> None:
    assert validate_params(params) is None


def _msgs(*messages: Any) -> dict[str, Any]:
    return with_(messages=list(messages))


INVALID: list[tuple[object, str]] = [
    ([], "params: Input should be a valid dictionary or object"),
    ("x", "params: Input should be a valid dictionary or object"),
    (without("model"), "model: Field required"),
    (with_(model=3), "model: Input should be a valid string"),
    (with_(model=""), "model: String should have at least 1 character"),
    (without("max_tokens"), "max_tokens: Field required"),
    (with_(max_tokens="10"), "max_tokens: Input should be a valid integer"),
    (with_(max_tokens=True), "max_tokens: Input should be a valid integer"),
    (with_(max_tokens=10.5), "max_tokens: Input should be a valid integer"),
    (with_(max_tokens=0), "max_tokens: must be greater than or equal to 1"),
    (with_(max_tokens=-5), "max_tokens: must be greater than or equal to 1"),
    (without("messages"), "messages: Field required"),
    (with_(messages=None), "messages: Field required"),
    (with_(messages="hi"), "messages: Input should be a valid list"),
    (with_(messages=[]), "messages: at least one message is required"),
    (_msgs("hi"), "messages.0: Input should be a valid dictionary or object"),
    (_msgs({"content": "hi"}), "messages.0.role: Field required"),
    (_msgs({"role": "system", "content": "hi"}), "messages.0.role: Input should be 'user' or 'assistant'"),
    (_msgs({"role": "user"}), "messages.0.content: Field required"),
    (
        _msgs({"role": "user", "content": 5}),
        "messages.0.content: Input should be a valid string or a list of content blocks",
    ),
    (
        _msgs({"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"text": "x"}]}),
        "messages.1.content.0.type: Field required",
    ),
    (
        _msgs({"role": "user", "content": [{"type": 1}]}),
        "messages.0.content.0.type: Input should be a valid string",
    ),
    (
        _msgs({"role": "user", "content": ["hi"]}),
        "messages.0.content.0: Input should be a valid dictionary or object",
    ),
    (_msgs({"role": "user", "content": [{"type": "text"}]}), "messages.0.content.0.text: Field required"),
    (
        _msgs({"role": "user", "content": [{"type": "text", "text": 1}]}),
        "messages.0.content.0.text: Input should be a valid string",
    ),
    (with_(stream=True), '"stream=True" is not supported in the Message Batches API'),
    (with_(stream="yes"), "stream: Input should be a valid boolean"),
    (with_(system=5), "system: Input should be a valid string or a list of content blocks"),
    (with_(system={"type": "text", "text": "x"}), "system: Input should be a valid string or a list of content blocks"),
    (with_(system=[{"text": "x"}]), "system.0.type: Field required"),
    (with_(system=[{"type": "text"}]), "system.0.text: Field required"),
    (with_(temperature="hot"), "temperature: Input should be a valid number"),
    (with_(temperature=True), "temperature: Input should be a valid number"),
    (with_(top_p="0.9"), "top_p: Input should be a valid number"),
    (with_(top_k=2.5), "top_k: Input should be a valid integer"),
    (with_(stop_sequences="END"), "stop_sequences: Input should be a valid list"),
    (with_(stop_sequences=["END", 5]), "stop_sequences.1: Input should be a valid string"),
    (with_(tools={"name": "x"}), "tools: Input should be a valid list"),
    (with_(tools=["x"]), "tools.0: Input should be a valid dictionary or object"),
    (with_(tools=[{"input_schema": {"type": "object"}}]), "tools.0.name: Field required"),
    (with_(tools=[{"type": "custom", "input_schema": {}}]), "tools.0.name: Field required"),
    (with_(tools=[{"name": 5, "input_schema": {}}]), "tools.0.name: Input should be a valid string"),
    (with_(tools=[{"name": "f"}]), "tools.0.input_schema: Field required"),
    (
        with_(tools=[{"name": "f", "input_schema": "{}"}]),
        "tools.0.input_schema: Input should be a valid dictionary or object",
    ),
    (with_(tools=[{"type": 3, "name": "f"}]), "tools.0.type: Input should be a valid string"),
    (with_(tool_choice="auto"), "tool_choice: Input should be a valid dictionary or object"),
    (with_(tool_choice={}), "tool_choice.type: Field required"),
    (with_(tool_choice={"type": "some"}), "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'"),
    (with_(tool_choice={"type": "tool"}), "tool_choice.name: Field required"),
    (with_(tool_choice={"type": "tool", "name": 1}), "tool_choice.name: Input should be a valid string"),
    (with_(metadata="m"), "metadata: Input should be a valid dictionary or object"),
    (with_(thinking=True), "thinking: Input should be a valid dictionary or object"),
    (with_(thinking={"budget_tokens": 1000}), "thinking.type: Field required"),
    (
        with_(thinking={"type": "on"}),
        "thinking.type: Input should be 'enabled', 'disabled', 'adaptive' or 'between_tools'",
    ),
    (
        with_(thinking={"type": "enabled", "budget_tokens": "1000"}),
        "thinking.budget_tokens: Input should be a valid integer",
    ),
    (
        with_(thinking={"type": "enabled", "budget_tokens": 0}),
        "thinking.budget_tokens: must be greater than or equal to 1",
    ),
]


@pytest.mark.parametrize(("params", "message"), INVALID, ids=[m for _, m in INVALID])
def test_invalid_params_are_reported(params: object, message: str) -> None:
    assert validate_params(params) == message


def test_validation_does_not_mutate_params() -> None:
    for params in [*SPEC_EXAMPLES, *OTHER_VALID]:
        before = copy.deepcopy(params)
        validate_params(params)
        assert params == before


def test_first_problem_wins_in_field_order() -> None:
    assert validate_params({"max_tokens": 0}) == "model: Field required"
    assert validate_params({"model": "m", "messages": []}) == "max_tokens: Field required"
