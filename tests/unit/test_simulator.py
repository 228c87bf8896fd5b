"""The simulator backend: deterministic, SDK-valid Messages that honour the request's params."""

from __future__ import annotations

import base64
import copy
import json
import re
import time
from typing import Any

import jsonschema
import pydantic
import pytest
from anthropic.types.beta.messages import BetaMessageBatchIndividualResponse
from anthropic.types.messages import MessageBatchIndividualResponse

from msgbatch.backends.base import Backend, CallContext
from msgbatch.backends.simulate import SimulatorBackend, parse_directives, simulate
from msgbatch.errors import RESULT_ERROR_TYPES, MsgbatchError
from msgbatch.validation import validate_params

MODEL = "claude-sonnet-4-5-20250929"
QUESTION = "What is the capital of France?"


def params(content: Any = QUESTION, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 1024, "messages": [{"role": "user", "content": content}], **extra}


def run(p: dict[str, Any]) -> dict[str, Any]:
    message, latency = simulate(p)
    assert latency is None
    check_sdk(message)
    return message


def text_of(message: dict[str, Any]) -> str:
    return "".join(b["text"] for b in message["content"] if b["type"] == "text")


# --- strict SDK validation --------------------------------------------------------------------


def _assert_no_extras(value: object, path: str = "") -> None:
    """The SDK's models allow unknown keys, so a misspelt field would slip through: refuse them."""
    if isinstance(value, pydantic.BaseModel):
        assert not value.model_extra, f"unexpected keys at {path or 'top'}: {value.model_extra}"
        for name in type(value).model_fields:
            _assert_no_extras(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _assert_no_extras(item, f"{path}.{i}")


def check_sdk(message: dict[str, Any]) -> None:
    line = {"custom_id": "x", "result": {"type": "succeeded", "message": message}}
    for model in (MessageBatchIndividualResponse, BetaMessageBatchIndividualResponse):
        parsed = model.model_validate(line, strict=True)
        _assert_no_extras(parsed)
    assert re.fullmatch(r"msg_[0-9A-Za-z]{24}", message["id"])
    assert message["model"] == MODEL
    usage = message["usage"]
    assert usage["service_tier"] == "batch"
    assert usage["cache_creation_input_tokens"] == 0 and usage["cache_read_input_tokens"] == 0
    assert usage["input_tokens"] >= 1 and usage["output_tokens"] >= 1


def test_sdk_validation_is_strict_enough() -> None:
    good = run(params(thinking={"type": "enabled"}))
    broken: list[dict[str, Any]] = []
    for path, value in [
        (("stop_reason",), "finished"),
        (("type",), "msg"),
        (("role",), "user"),
        (("usage", "output_tokens"), "5"),
        (("usage", "service_tier"), "cheap"),
        (("content", 0, "type"), "thought"),
    ]:
        bad = copy.deepcopy(good)
        node: Any = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        broken.append(bad)
    no_signature = copy.deepcopy(good)
    del no_signature["content"][0]["signature"]
    broken.append(no_signature)
    for bad in broken:
        with pytest.raises(pydantic.ValidationError):
            check_sdk(bad)
    misspelt = copy.deepcopy(good)
    misspelt["stop_seqence"] = None
    with pytest.raises(AssertionError, match="unexpected keys"):
        check_sdk(misspelt)


# --- determinism and shape --------------------------------------------------------------------


def test_same_params_same_message() -> None:
    p = params(system="Be brief.", thinking={"type": "enabled"})
    first = run(p)
    assert run(copy.deepcopy(p)) == first
    # Key order does not matter: the hash is of a canonical encoding.
    assert run(dict(reversed(list(p.items())))) == first


def test_different_prompts_differ() -> None:
    a, b = run(params("Tell me about owls")), run(params("Tell me about cats"))
    assert a["id"] != b["id"]
    assert text_of(a) != text_of(b)
    assert run(params("Tell me about owls", max_tokens=1000))["id"] != a["id"]


def test_plain_answer_echoes_the_prompt() -> None:
    message = run(params())
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["stop_reason"] == "end_turn" and message["stop_sequence"] is None
    assert [b["type"] for b in message["content"]] == ["text"]
    text = text_of(message)
    assert text.startswith(f'Regarding "{QUESTION}": ')
    assert text.endswith(".")
    words = len(text.split())
    assert 8 <= words <= 80
    assert message["usage"]["output_tokens"] == words


def test_echo_is_first_eight_words_of_last_user_message() -> None:
    long = "one two  three\nfour five six seven eight nine ten"
    convo = {
        "model": MODEL,
        "max_tokens": 500,
        "messages": [
            {"role": "user", "content": "earlier question"},
            {"role": "assistant", "content": "earlier answer"},
            {"role": "user", "content": [{"type": "text", "text": "one two"}, {"type": "text", "text": long[8:]}]},
        ],
    }
    assert text_of(run(convo)).startswith('Regarding "one two three four five six seven eight": ')
    assert text_of(run(params(long))).startswith('Regarding "one two three four five six seven eight": ')


def test_answer_without_user_text() -> None:
    tool_result = params([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 degrees"}])
    assert text_of(run(tool_result)).startswith("Based on the tool result: ")
    image = params([{"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}])
    assert text_of(run(image)).startswith("Regarding your message: ")


def test_lengths_vary_with_the_prompt() -> None:
    lengths = {len(text_of(run(params(f"Question number {i}"))).split()) for i in range(40)}
    assert len(lengths) > 5
    assert min(lengths) >= 8 and max(lengths) <= 80


# --- max_tokens and stop_sequences --------------------------------------------------------------


def test_max_tokens_cuts_the_same_answer() -> None:
    full = run(params())
    full_text = text_of(full)
    assert full["usage"]["output_tokens"] > 5
    for limit in range(1, full["usage"]["output_tokens"]):
        cut = run(params(max_tokens=limit))
        assert cut["stop_reason"] == "max_tokens"
        assert cut["usage"]["output_tokens"] <= limit
        assert full_text.startswith(text_of(cut))
        assert len(text_of(cut).split()) == limit
    exact = run(params(max_tokens=full["usage"]["output_tokens"]))
    assert exact["stop_reason"] == "end_turn" and text_of(exact) == full_text


def test_stop_sequence_in_echo_triggers() -> None:
    message = run(params(stop_sequences=["capital"]))
    assert message["stop_reason"] == "stop_sequence"
    assert message["stop_sequence"] == "capital"
    assert text_of(message) == 'Regarding "What is the '
    assert message["usage"]["output_tokens"] <= 1024


def test_earliest_stop_sequence_wins() -> None:
    message = run(params(stop_sequences=["France", "the capital", "zzz-not-there"]))
    assert message["stop_sequence"] == "the capital"
    assert text_of(message) == 'Regarding "What is '


def test_absent_stop_sequence_changes_nothing_but_id() -> None:
    plain = run(params())
    other = run(params(stop_sequences=["zzz-not-there"]))
    assert other["stop_reason"] == "end_turn" and other["stop_sequence"] is None
    assert other["content"] == plain["content"]
    assert other["id"] != plain["id"]


def test_max_tokens_before_stop_sequence_wins() -> None:
    message = run(params(stop_sequences=["France"], max_tokens=3))
    assert message["stop_reason"] == "max_tokens" and message["stop_sequence"] is None
    assert text_of(message) == 'Regarding "What is'


def test_stop_sequence_at_the_very_start_leaves_no_text() -> None:
    message = run(params(stop_sequences=["Regarding"]))
    assert message["stop_reason"] == "stop_sequence"
    assert message["content"] == []
    assert message["usage"]["output_tokens"] == 1


# --- system and input tokens ----------------------------------------------------------------------


def test_system_shapes_answer_and_counts_as_input() -> None:
    plain = run(params())
    system = "You are a terse geography teacher who answers in one line."
    shaped = run(params(system=system))
    assert text_of(shaped).startswith('Following the system prompt ("You are a terse"), regarding "What is')
    assert text_of(shaped) != text_of(plain)
    delta = shaped["usage"]["input_tokens"] - plain["usage"]["input_tokens"]
    assert abs(delta - len(system) / 4) <= 2
    blocks = run(params(system=[{"type": "text", "text": system}]))
    assert text_of(blocks).startswith('Following the system prompt ("You are a terse")')
    assert blocks["usage"]["input_tokens"] == shaped["usage"]["input_tokens"]


def test_input_tokens_follow_prompt_size() -> None:
    short = run(params("hi"))["usage"]["input_tokens"]
    long = run(params("word " * 400))["usage"]["input_tokens"]
    assert short >= 1
    assert abs(long - 2000 / 4) <= 2
    tools = [{"name": "lookup", "description": "Look things up " * 20, "input_schema": {"type": "object"}}]
    with_tools = run(params("word " * 400, tools=tools))["usage"]["input_tokens"]
    assert with_tools > long + 60
    two_turns = {
        "model": MODEL,
        "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "word " * 400},
            {"role": "assistant", "content": [{"type": "text", "text": "word " * 400}]},
            {"role": "user", "content": "hi"},
        ],
    }
    assert run(two_turns)["usage"]["input_tokens"] > 2 * long - 5


# --- thinking -----------------------------------------------------------------------------------------


def _thinking_block(message: dict[str, Any]) -> dict[str, Any]:
    first = message["content"][0]
    assert first["type"] == "thinking"
    assert base64.b64decode(first["signature"], validate=True)
    return first


@pytest.mark.parametrize("thinking", [{"type": "enabled"}, {"type": "adaptive"}])
def test_thinking_block_first(thinking: dict[str, Any]) -> None:
    message = run(params(thinking=thinking))
    block = _thinking_block(message)
    assert block["thinking"].startswith(f'The user asks about "{QUESTION}".')
    assert [b["type"] for b in message["content"]] == ["thinking", "text"]
    words = len(block["thinking"].split()) + len(text_of(message).split())
    assert message["usage"]["output_tokens"] == words


def test_thinking_budget_bounds_the_block() -> None:
    for budget in (1, 5, 12):
        for i in range(5):
            message = run(params(f"Task {i}", thinking={"type": "enabled", "budget_tokens": budget}))
            assert len(_thinking_block(message)["thinking"].split()) <= budget
    generous = run(params(thinking={"type": "enabled", "budget_tokens": 2000}))
    assert len(_thinking_block(generous)["thinking"].split()) >= 16


def test_thinking_counts_toward_max_tokens() -> None:
    for limit in (1, 3, 10, 20, 40):
        for i in range(5):
            message = run(params(f"Task {i}", thinking={"type": "enabled"}, max_tokens=limit))
            words = sum(len((b.get("thinking") or b.get("text") or "").split()) for b in message["content"])
            assert words <= limit
            assert message["usage"]["output_tokens"] <= limit
            assert message["stop_reason"] == "max_tokens"
    only_thinking = run(params(thinking={"type": "enabled"}, max_tokens=3))
    assert [b["type"] for b in only_thinking["content"]] == ["thinking"]


def test_thinking_disabled_or_omitted() -> None:
    assert [b["type"] for b in run(params(thinking={"type": "disabled"}))["content"]] == ["text"]
    omitted = run(params(thinking={"type": "enabled", "display": "omitted"}))
    block = _thinking_block(omitted)
    assert block["thinking"] == ""
    assert omitted["usage"]["output_tokens"] > len(text_of(omitted).split())


def test_thinking_signature_depends_on_content() -> None:
    a = _thinking_block(run(params("one", thinking={"type": "enabled"})))["signature"]
    b = _thinking_block(run(params("two", thinking={"type": "enabled"})))["signature"]
    assert a != b


# --- tool use ----------------------------------------------------------------------------------------------


def conforms(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None) -> bool:
    """Just enough of JSON Schema to check what the simulator claims to support."""
    root = root if root is not None else schema
    if "$ref" in schema:
        node: Any = root
        for part in schema["$ref"][2:].split("/") if schema["$ref"] != "#" else []:
            node = node[part]
        return conforms(value, node, root)
    if "const" in schema:
        return bool(value == schema["const"])
    if "enum" in schema:
        return value in schema["enum"]
    if "anyOf" in schema or "oneOf" in schema:
        return any(conforms(value, s, root) for s in schema.get("anyOf", schema.get("oneOf", [])))
    if "allOf" in schema:
        return all(conforms(value, s, root) for s in schema["allOf"])
    stype = schema.get("type")
    types = stype if isinstance(stype, list) else [stype] if stype else []
    if not types:
        return True
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
    }
    if not any(checks[t](value) for t in types):
        return False
    if isinstance(value, dict):
        props = schema.get("properties", {})
        if any(name not in value for name in schema.get("required", [])):
            return False
        if schema.get("additionalProperties") is False and set(value) - set(props):
            return False
        return all(conforms(v, props[k], root) for k, v in value.items() if k in props)
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", 10**9):
            return False
        return all(conforms(v, schema.get("items", {}), root) for v in value)
    if isinstance(value, str):
        return schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", 10**9)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            return False
        if "maximum" in schema and value > schema["maximum"]:
            return False
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            return False
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            return False
        if "multipleOf" in schema and value % schema["multipleOf"] != 0:
            return False
    return True


WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "minLength": 20},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "step": {"type": "integer", "minimum": 3, "maximum": 30, "multipleOf": 5},
            "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "detailed": {"type": "boolean"},
            "note": {"type": ["string", "null"], "maxLength": 3},
            "nothing": {"type": "null"},
            "version": {"const": 2},
            "mode": {"type": "string", "default": "fast"},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 3},
            "where": {"$ref": "#/$defs/place"},
            "choice": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 10}]},
            "when": {"type": "string", "format": "date-time"},
            "id": {"type": "string", "format": "uuid"},
            "both": {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}]},
        },
        "required": ["city", "unit", "where"],
        "additionalProperties": False,
        "$defs": {
            "place": {
                "type": "object",
                "properties": {
                    "lat": {"type": "number", "minimum": -90, "maximum": 90},
                    "lon": {"type": "number", "minimum": -180, "maximum": 180},
                    "inner": {
                        "type": "object",
                        "properties": {"deep": {"type": "array", "items": {"type": "integer"}}},
                    },
                },
                "required": ["lat", "lon"],
            }
        },
    },
}
SEARCH_SERVER_TOOL = {"type": "web_search_20250305", "name": "web_search"}
NOTE_TOOL = {"name": "take_note", "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}}}


def _tool_use(message: dict[str, Any]) -> dict[str, Any]:
    assert message["stop_reason"] == "tool_use"
    block = message["content"][-1]
    assert block["type"] == "tool_use"
    assert re.fullmatch(r"toolu_[0-9A-Za-z]{24}", block["id"])
    return block


def test_forced_tool_input_fits_schema() -> None:
    for i in range(30):
        p = params(
            f"Weather please, request {i}",
            tools=[NOTE_TOOL, WEATHER],
            tool_choice={"type": "tool", "name": "get_weather"},
        )
        assert validate_params(p) is None
        message = run(p)
        block = _tool_use(message)
        assert block["name"] == "get_weather"
        assert conforms(block["input"], WEATHER["input_schema"]), block["input"]
        assert block["input"]["version"] == 2 and block["input"]["mode"] == "fast"
        # A forced call comes without preamble.
        assert [b["type"] for b in message["content"]] == ["tool_use"]
        assert message["usage"]["output_tokens"] <= 1024


def test_tool_choice_any_picks_first_custom_tool() -> None:
    message = run(params(tools=[SEARCH_SERVER_TOOL, NOTE_TOOL, WEATHER], tool_choice={"type": "any"}))
    block = _tool_use(message)
    assert block["name"] == "take_note"
    assert conforms(block["input"], NOTE_TOOL["input_schema"])


def test_auto_calls_a_tool_the_user_names() -> None:
    message = run(params("Please use get_weather for Paris", tools=[NOTE_TOOL, WEATHER]))
    block = _tool_use(message)
    assert block["name"] == "get_weather"
    assert message["content"][0] == {"type": "text", "text": "I'll use the get_weather tool for this."}
    plain = run(params("What is the weather?", tools=[NOTE_TOOL, WEATHER], tool_choice={"type": "auto"}))
    assert plain["stop_reason"] == "end_turn" and [b["type"] for b in plain["content"]] == ["text"]
    none = run(params("Use get_weather", tools=[WEATHER], tool_choice={"type": "none"}))
    assert none["stop_reason"] == "end_turn"


def test_tool_use_with_thinking_and_budget() -> None:
    p = params(tools=[WEATHER], tool_choice={"type": "any"}, thinking={"type": "enabled", "budget_tokens": 10})
    message = run(p)
    assert [b["type"] for b in message["content"]] == ["thinking", "tool_use"]
    assert message["usage"]["output_tokens"] <= 1024
    tiny = run({**p, "max_tokens": 12})
    assert tiny["stop_reason"] == "max_tokens"
    assert tiny["usage"]["output_tokens"] <= 12
    assert all(b["type"] != "tool_use" for b in tiny["content"])


def test_tool_choice_naming_an_unknown_tool() -> None:
    with pytest.raises(MsgbatchError) as info:
        simulate(params(tools=[WEATHER], tool_choice={"type": "tool", "name": "nope"}))
    assert info.value.type == "invalid_request_error"
    assert info.value.message.startswith("tool_choice.name: ")
    assert "nope" in info.value.message


def test_tool_input_for_odd_schemas() -> None:
    schemas: list[dict[str, Any]] = [
        {"type": "object"},
        {"type": "object", "properties": {}},
        {"properties": {"x": {"items": {"type": "boolean"}}}},
        {"type": "object", "properties": {"tree": {"$ref": "#"}}, "required": []},
        {"type": "object", "properties": {"n": {"type": "number", "minimum": 5, "maximum": 5}}},
        {"type": "object", "properties": {"s": {"type": "string", "format": "email"}}},
    ]
    for schema in schemas:
        tool = {"name": "odd", "input_schema": schema}
        block = _tool_use(run(params(tools=[tool], tool_choice={"type": "any"})))
        assert isinstance(block["input"], dict)
        assert conforms(block["input"], schema), (schema, block["input"])
    # A schema that requires itself has no finite instance: the simulator must still answer.
    endless = {"name": "odd", "input_schema": {"properties": {"loop": {"$ref": "#"}}, "required": ["loop"]}}
    assert isinstance(_tool_use(run(params(tools=[endless], tool_choice={"type": "any"})))["input"], dict)


# --- every variant validates against the SDK ----------------------------------------------------------------


def test_many_variants_validate_against_the_sdk() -> None:
    variants: list[dict[str, Any]] = []
    for i in range(20):
        variants += [
            params(f"Prompt {i} about things", max_tokens=1 + i * 7),
            params(f"Prompt {i}", system=f"System {i}", thinking={"type": "adaptive"}),
            params(f"Prompt {i}", stop_sequences=["Prompt", "."], metadata={"user_id": "u"}),
            params(f"Prompt {i}", tools=[WEATHER, SEARCH_SERVER_TOOL], tool_choice={"type": "any"}, max_tokens=i + 1),
            params([{"type": "text", "text": f"Prompt {i}"}], temperature=0.5, web_search={"type": "enabled"}),
        ]
    for p in variants:
        assert validate_params(p) is None
        message = run(p)
        assert message["usage"]["output_tokens"] <= p["max_tokens"]


# --- directives ----------------------------------------------------------------------------------------------


def test_parse_directives() -> None:
    assert parse_directives(params()) == {}
    assert parse_directives(params("hi [[simulate latency=0.1 error=api_error]] there")) == {
        "latency": "0.1",
        "error": "api_error",
    }
    blocks = params([{"type": "text", "text": "a"}, {"type": "text", "text": "[[simulate latency=2.5]]"}])
    assert parse_directives(blocks) == {"latency": "2.5"}
    earlier = {
        "model": MODEL,
        "max_tokens": 10,
        "messages": [
            {"role": "user", "content": "[[simulate error=api_error]]"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "plain"},
        ],
    }
    assert parse_directives(earlier) == {}
    assert parse_directives(params("[[not a directive]] [[simulate]]")) == {}


def test_latency_directive_is_returned_and_stripped() -> None:
    message, latency = simulate(params("Hello [[simulate latency=2.5]] there"))
    assert latency == 2.5
    check_sdk(message)
    assert text_of(message).startswith('Regarding "Hello there": ')


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[[simulate latency=abc]]", "invalid simulate latency: abc"),
        ("[[simulate latency=-1]]", "invalid simulate latency: -1"),
        ("[[simulate latency=nan]]", "invalid simulate latency: nan"),
        ("[[simulate error=teapot_error]]", "unknown simulate error type: teapot_error"),
        ("[[simulate error=request_too_large]]", "unknown simulate error type: request_too_large"),
        ("[[simulate speed=3]]", "unknown simulate directive: speed"),
        ("[[simulate latency]]", "malformed simulate directive: 'latency' (expected key=value)"),
    ],
)
def test_bad_directives_are_invalid_requests(content: str, message: str) -> None:
    with pytest.raises(MsgbatchError) as info:
        simulate(params(content))
    assert info.value.type == "invalid_request_error"
    assert info.value.message == message
    assert not info.value.retryable


@pytest.mark.parametrize("error_type", sorted(RESULT_ERROR_TYPES))
async def test_error_directive(error_type: str) -> None:
    p = params(f"boom [[simulate error={error_type}]]")
    with pytest.raises(MsgbatchError) as info:
        simulate(p)
    assert (info.value.type, info.value.message) == (error_type, f"Simulated {error_type}")
    assert info.value.retryable is False
    with pytest.raises(MsgbatchError) as info:
        await SimulatorBackend().create_message(p, CallContext())
    assert info.value.type == error_type


async def test_backend_sleeps_for_latency_directive() -> None:
    backend = SimulatorBackend()
    started = time.monotonic()
    message = await backend.create_message(params("hi [[simulate latency=0.05]]"), CallContext(betas=("some-beta",)))
    assert time.monotonic() - started >= 0.05
    check_sdk(message)
    assert message == simulate(params("hi [[simulate latency=0.05]]"))[0]
    await backend.aclose()


async def test_backend_sleeps_then_fails() -> None:
    started = time.monotonic()
    with pytest.raises(MsgbatchError) as info:
        await SimulatorBackend().create_message(
            params("[[simulate latency=0.05 error=overloaded_error]]"), CallContext()
        )
    assert time.monotonic() - started >= 0.05
    assert info.value.type == "overloaded_error"


async def test_backend_default_latency() -> None:
    backend = SimulatorBackend(default_latency=0.05)
    started = time.monotonic()
    await backend.create_message(params(), CallContext())
    assert time.monotonic() - started >= 0.05
    # A directive overrides the default, down to no delay at all.
    started = time.monotonic()
    await backend.create_message(params("[[simulate latency=0]]"), CallContext())
    assert time.monotonic() - started < 0.04


async def test_backend_matches_pure_function_and_interface() -> None:
    backend: Backend = SimulatorBackend()
    assert backend.name == "simulate"
    p = params(system="x", thinking={"type": "enabled"})
    assert await backend.create_message(p, CallContext()) == simulate(p)[0]
    await backend.aclose()


def test_simulate_does_not_mutate_params() -> None:
    p = params("hi [[simulate latency=0.01]]", tools=[WEATHER], tool_choice={"type": "any"}, stop_sequences=["x"])
    before = copy.deepcopy(p)
    simulate(p)
    assert p == before


# --- mid-conversation system messages ---------------------------------------------------------


def test_system_messages_in_messages_join_the_system_prompt() -> None:
    p = params(system="Be brief.")
    p["messages"] = [
        {"role": "user", "content": "Hello there"},
        {"role": "system", "content": "Answer in French"},
        {"role": "assistant", "content": "D'accord"},
        {"role": "system", "content": [{"type": "text", "text": "Cleared"}], "clear_at": "next_user_message"},
        {"role": "user", "content": QUESTION},
        {"role": "system", "output_config": {"effort": "low"}},  # beta: no content
    ]
    assert validate_params(p) is None
    text = text_of(run(p))
    assert text.startswith(f'Following the system prompt ("Be brief. Answer in"), regarding "{QUESTION}":')
    # Without a later user message a next_user_message system message is still shown.
    p["messages"] = [
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": "Now shown", "clear_at": "next_user_message"},
    ]
    assert text_of(run(p)).startswith('Following the system prompt ("Be brief. Now shown"), regarding "Hi":')
    del p["system"]
    assert text_of(run(p)).startswith('Following the system prompt ("Now shown"), regarding "Hi":')


# --- structured outputs -----------------------------------------------------------------------

STRUCTURED_SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 0, "maximum": 130},
            "email": {"type": "string", "format": "email"},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "plan": {"type": "string", "enum": ["free", "pro"]},
            "score": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "zip": {"type": ["string", "null"]}},
                "required": ["city", "zip"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "age", "email", "tags", "plan", "score", "address"],
        "additionalProperties": False,
    },
    {
        "$defs": {"item": {"type": "object", "properties": {"sku": {"const": "A-1"}}, "required": ["sku"]}},
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 2}},
        "required": ["items"],
    },
    {"type": "array", "items": {"anyOf": [{"type": "integer", "multipleOf": 5}, {"type": "null"}]}, "minItems": 3},
    {"type": "string", "minLength": 12},
]


@pytest.mark.parametrize("schema", STRUCTURED_SCHEMAS)
@pytest.mark.parametrize("where", ["output_config", "output_format"])
def test_structured_output_is_json_valid_against_the_schema(schema: dict[str, Any], where: str) -> None:
    fmt = {"type": "json_schema", "schema": schema}
    for i in range(10):
        extra = {"output_config": {"format": fmt}} if where == "output_config" else {"output_format": fmt}
        p = params(f"Extract the record, take {i}", **extra)
        assert validate_params(p) is None
        message = run(p)
        assert message["stop_reason"] == "end_turn"
        [block] = message["content"]
        jsonschema.validate(json.loads(block["text"]), schema)
        assert message["usage"]["output_tokens"] == -(-len(block["text"]) // 4)


def test_structured_output_under_max_tokens_and_stop_sequences() -> None:
    schema = STRUCTURED_SCHEMAS[0]
    p = params(output_config={"format": {"type": "json_schema", "schema": schema}, "effort": "low"}, max_tokens=3)
    message = run(p)
    assert message["stop_reason"] == "max_tokens" and message["usage"]["output_tokens"] == 3
    assert len(message["content"][0]["text"]) == 12  # 3 tokens of 4 characters: a cut document
    p = params(output_config={"format": {"type": "json_schema", "schema": schema}}, stop_sequences=['"age"'])
    message = run(p)
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", '"age"')
    assert message["content"][0]["text"].startswith('{"name": ')
    # A forced tool still answers with the tool call, without a preamble.
    p = params(output_config={"format": {"type": "json_schema", "schema": schema}}, tools=[WEATHER])
    p["tool_choice"] = {"type": "tool", "name": "get_weather"}
    assert [b["type"] for b in run(p)["content"]] == ["tool_use"]
