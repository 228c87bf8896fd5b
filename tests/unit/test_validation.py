"""validate_params: the Messages API's checks on one batch request's params."""

from __future__ import annotations

import copy
import random
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


@pytest.mark.parametrize("params", SPEC_EXAMPLES, ids=lambda p: min(set(p) - {"model"}, default="x"))
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
    # Mid-conversation system messages: GA (content) and beta (clear_at, output_config, no content).
    with_(
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "system", "content": "From now on, answer in French."},
            {"role": "assistant", "content": "D'accord."},
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}], "clear_at": "next_user_message"},
            {"role": "user", "content": "Why?"},
            {"role": "system", "output_config": {"effort": "low"}},
            {"role": "system", "content": "x", "clear_at": None, "output_config": {}},
        ]
    ),
    with_(output_config={"effort": "high", "format": {"type": "json_schema", "schema": {"type": "object"}}}),
    with_(output_config={"effort": None, "format": None}),
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
    (_msgs({"role": "bot", "content": "hi"}), "messages.0.role: Input should be 'user', 'assistant' or 'system'"),
    # Found by fuzzing: a role, tool_choice.type or thinking.type that is an object or a list
    # crashed the check ("unhashable type: 'dict'") instead of being reported.
    (_msgs({"role": {"x": 1}, "content": "hi"}), "messages.0.role: Input should be 'user', 'assistant' or 'system'"),
    (_msgs({"role": ["user"], "content": "hi"}), "messages.0.role: Input should be 'user', 'assistant' or 'system'"),
    (_msgs({"role": "system"}), "messages.0: a system message needs content or output_config fields"),
    (
        _msgs({"role": "system", "output_config": {}}),
        "messages.0: a system message needs content or output_config fields",
    ),
    (
        _msgs({"role": "system", "content": "x", "clear_at": "later"}),
        "messages.0.clear_at: Input should be 'next_user_message' or 'never'",
    ),
    (
        _msgs({"role": "system", "content": "x", "clear_at": {}}),
        "messages.0.clear_at: Input should be 'next_user_message' or 'never'",
    ),
    (
        _msgs({"role": "system", "content": "x", "output_config": "low"}),
        "messages.0.output_config: Input should be a valid dictionary or object",
    ),
    (_msgs({"role": "system", "content": [{"type": "text"}]}), "messages.0.content.0.text: Field required"),
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
    (with_(tool_choice={"type": {"a": 1}}), "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'"),
    (with_(tool_choice={"type": ["any"]}), "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'"),
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
        with_(thinking={"type": {"enabled": True}}),
        "thinking.type: Input should be 'enabled', 'disabled', 'adaptive' or 'between_tools'",
    ),
    (
        with_(thinking={"type": ["enabled"]}),
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
    (with_(output_config="json"), "output_config: Input should be a valid dictionary or object"),
    (
        with_(output_config={"effort": "extreme"}),
        "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'",
    ),
    (
        with_(output_config={"effort": ["low"]}),
        "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'",
    ),
    (with_(output_config={"format": "json"}), "output_config.format: Input should be a valid dictionary or object"),
    (with_(output_config={"format": {"schema": {}}}), "output_config.format.type: Field required"),
    (
        with_(output_config={"format": {"type": "json_object", "schema": {}}}),
        "output_config.format.type: Input should be 'json_schema'",
    ),
    (with_(output_config={"format": {"type": "json_schema"}}), "output_config.format.schema: Field required"),
    (
        with_(output_config={"format": {"type": "json_schema", "schema": "{}"}}),
        "output_config.format.schema: Input should be a valid dictionary or object",
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


def test_found_by_fuzzing_no_input_crashes_the_check() -> None:
    """Random values of every JSON kind at every place of a full request: the check answers (None
    or a message naming a field), it never raises."""
    rng = random.Random(9)
    values: list[object] = [None, True, 0, -1, 2.5, "", "x", "user", [], [1], {}, {"type": "text"}, {"a": []}]
    full = with_(
        system=[{"type": "text", "text": "s"}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "system", "content": "x", "clear_at": "never", "output_config": {"effort": "low"}},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
        ],
        tools=[{"name": "f", "input_schema": {"type": "object"}}],
        tool_choice={"type": "tool", "name": "f"},
        thinking={"type": "enabled", "budget_tokens": 2048},
        output_config={"effort": "low", "format": {"type": "json_schema", "schema": {}}},
        stop_sequences=["a"],
        metadata={"user_id": "u"},
        temperature=1,
        billing_policy={"type": "billing_policy", "bill_to": "self"},
    )

    def places(node: object, path: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        found = [path]
        if isinstance(node, dict):
            for key, value in node.items():
                found += places(value, (*path, key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                found += places(value, (*path, i))
        return found

    targets = places(full)[1:]
    for _ in range(3000):
        params = copy.deepcopy(full)
        for path in rng.sample(targets, rng.randint(1, 3)):
            node: Any = params
            try:
                for key in path[:-1]:
                    node = node[key]
                node[path[-1]] = copy.deepcopy(rng.choice(values))
            except (KeyError, IndexError, TypeError):
                continue  # an earlier change replaced a parent
        for strict in (False, True):
            problem = validate_params(params, strict=strict, version="2026-10-21")
            assert problem is None or (isinstance(problem, str) and "unhashable" not in problem)


# --- strict: hosted parity --------------------------------------------------------------------

V2026 = "2026-10-21"

STRICT_REFUSED: list[tuple[dict[str, Any], str | None, str]] = [
    (with_(speed="fast"), None, "speed: fast mode is not supported in the Message Batches API"),
    (with_(speed="standard"), V2026, "speed: fast mode is not supported in the Message Batches API"),
    (with_(thread={"type": "create"}), None, "thread: a thread (server-held conversation state) is not supported"),
    (with_(cache_hint={"x": 1}), None, "cache_hint: this research-preview flag is not supported"),
    (with_(context_hint="long"), None, "context_hint: this research-preview flag is not supported"),
    (
        with_(thinking={"type": "enabled", "budget_tokens": 1023}),
        None,
        "thinking.budget_tokens: Input should be greater than or equal to 1024",
    ),
    (with_(thinking={"type": "enabled"}), None, "thinking.budget_tokens: Field required"),
    (
        with_(billing_policy={"type": "billing_policy", "bill_to": "user_profile"}),
        None,
        "billing_policy.bill_to: billing a user profile is not supported in the Message Batches API",
    ),
    (with_(temperature=1.0), V2026, "temperature: Extra inputs are not permitted"),
    (with_(top_p=0.9), V2026, "top_p: Extra inputs are not permitted"),
    (with_(top_k=5), V2026, "top_k: Extra inputs are not permitted"),
    (with_(temperature=0.5), "2027-01-15", "temperature: Extra inputs are not permitted"),
    (
        _msgs(
            {"role": "user", "content": "Read this"},
            {
                "role": "assistant",
                "content": [{"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "d"}}],
            },
            {"role": "user", "content": "Go on"},
        ),
        V2026,
        "messages.1.content.0: a document block is not allowed in an assistant message under anthropic-version "
        "2026-10-21",
    ),
    (
        _msgs({"role": "user", "content": [{"type": "text", "text": "q", "citations": [{"type": "char_location"}]}]}),
        V2026,
        "messages.0.content.0.citations: citations are not allowed on a text block in a user message",
    ),
    (
        _msgs(
            {
                "role": "user",
                "content": [
                    {
                        "type": "search_result",
                        "source": "s",
                        "title": "t",
                        "content": [{"type": "text", "text": "r", "citations": [{"type": "x"}]}],
                    }
                ],
            }
        ),
        V2026,
        "messages.0.content.0.content.0.citations: citations are not allowed on a text block in a user message",
    ),
]


@pytest.mark.parametrize(("params", "version", "message"), STRICT_REFUSED, ids=[m for _, _, m in STRICT_REFUSED])
def test_strict_refuses_what_the_hosted_api_refuses_in_a_batch(
    params: dict[str, Any], version: str | None, message: str
) -> None:
    problem = validate_params(params, strict=True, version=version)
    assert problem is not None and problem.startswith(message), problem
    # Off by default: local models want these.
    assert validate_params(params, version=version) is None


STRICT_ACCEPTED: list[tuple[dict[str, Any], str | None]] = [
    # Under 2023-06-01 (or with no version header) the 2026-10-21 rules do not apply.
    (with_(temperature=0.2, top_p=0.9, top_k=5), "2023-06-01"),
    (with_(temperature=0.2), None),
    (with_(temperature=0.2), "not-a-date"),
    (
        _msgs(
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [{"type": "document", "source": {"type": "text", "data": "d"}}]},
        ),
        "2023-06-01",
    ),
    # Citations stay allowed in assistant turns, and empty ones in user turns.
    (
        _msgs(
            {"role": "user", "content": [{"type": "text", "text": "q", "citations": []}]},
            {"role": "assistant", "content": [{"type": "text", "text": "a", "citations": [{"type": "x"}]}]},
            {"role": "user", "content": "more"},
        ),
        V2026,
    ),
    (with_(speed=None, thread=None, thinking={"type": "enabled", "budget_tokens": 1024}), V2026),
    (with_(thinking={"type": "adaptive"}, billing_policy={"type": "billing_policy", "bill_to": "self"}), V2026),
]


@pytest.mark.parametrize(("params", "version"), STRICT_ACCEPTED)
def test_strict_accepts_what_the_hosted_api_accepts(params: dict[str, Any], version: str | None) -> None:
    assert validate_params(params, strict=True, version=version) is None


def test_strict_checks_come_after_the_shape_checks() -> None:
    assert validate_params(with_(max_tokens=0, speed="fast"), strict=True) == (
        "max_tokens: must be greater than or equal to 1"
    )
