"""The OpenAI dialect's pure parts: the input file's checks, the output and error lines, the
Chat Completions <-> Messages translation, and what the simulator answers on each endpoint.

Answers are checked against the installed `openai` SDK's own models (ChatCompletion, Completion,
CreateEmbeddingResponse), as a client reading the output file would parse them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
from typing import Any

import jsonschema
import msgspec
import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion

from msgbatch.backends.base import CallContext
from msgbatch.backends.chat_messages import chat_completion, completion_params, messages_params
from msgbatch.backends.simulate import SimulatorBackend, simulate_embedding
from msgbatch.backends.translate import Untranslatable
from msgbatch.batch_input import MAX_CUSTOM_ID, MAX_ERRORS, check_input
from msgbatch.errors import InvalidRequestError, MsgbatchError
from msgbatch.models import CANCELED, EXPIRED
from msgbatch.results import (
    canceled_line,
    chat_tokens,
    expired_line,
    openai_bulk_line,
    openai_errored_line,
    openai_succeeded_line,
)

CHAT = "/v1/chat/completions"
TRICKY_IDS = [
    "plain",
    "with space",
    'quote"d',
    "back\\slash",
    "new\nline",
    "tab\t",
    "ctl\x01\x1f",
    "uni é ☃ 😀",
    "</script>",
    "x" * MAX_CUSTOM_ID,
]


def line(custom_id: Any = "a", **overrides: Any) -> dict[str, Any]:
    value = {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    }
    value.update(overrides)
    return {k: v for k, v in value.items() if v is not ...}


def jsonl(*lines: Any) -> bytes:
    return b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines)


def codes(content: bytes, max_lines: int = 50_000) -> list[tuple[str, int | None, str | None]]:
    _, errors = check_input(content, CHAT, max_lines)
    return [(e["code"], e["line"], e["param"]) for e in errors]


# -- the input file --------------------------------------------------------------------------


def test_good_lines_become_requests_with_their_bodies_as_sent() -> None:
    raw_body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"unknown_key":{"x":1.50}}'
    content = (
        jsonl(*[line(cid) for cid in TRICKY_IDS])
        + b"\n   \r\n"
        + b'{"custom_id":"raw","method":"POST","url":"/v1/chat/completions","body":'
        + raw_body
        + b',"extra":1}\r\n'
    )
    requests, errors = check_input(content, CHAT, 100)
    assert errors == []
    assert [r.custom_id for r in requests] == [*TRICKY_IDS, "raw"]
    assert bytes(requests[-1].params) == raw_body  # the bytes as written: 1.50 stays 1.50


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"not json\n", [("invalid_json_line", 1, None)]),
        (b'["a list"]\n', [("invalid_json_line", 1, None)]),
        (jsonl(line()) + b'{"custom_id": "b", "body": {\xff}}\n', [("invalid_json_line", 2, None)]),
        (
            b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"x":"\xff"}}\n',
            [("invalid_json_line", 1, None)],
        ),
        (jsonl(line(custom_id=...)), [("missing_required_parameter", 1, "custom_id")]),
        (jsonl(line(method=...)), [("missing_required_parameter", 1, "method")]),
        (jsonl(line(url=...)), [("missing_required_parameter", 1, "url")]),
        (jsonl(line(body=...)), [("missing_required_parameter", 1, "body")]),
        (jsonl(line(7)), [("invalid_type", 1, "custom_id")]),
        (jsonl(line("")), [("invalid_value", 1, "custom_id")]),
        (jsonl(line("x" * (MAX_CUSTOM_ID + 1))), [("invalid_value", 1, "custom_id")]),
        (jsonl(line("nul\0")), [("invalid_value", 1, "custom_id")]),
        (jsonl(line(method="GET")), [("invalid_value", 1, "method")]),
        (jsonl(line(url="/v1/embeddings")), [("url_mismatch", 1, "url")]),
        (jsonl(line(body=[1])), [("invalid_type", 1, "body")]),
        (jsonl(line("a"), line("b"), line("a")), [("duplicate_custom_id", 3, "custom_id")]),
        (b"", [("empty_file", None, None)]),
        (b"\n \n\r\n", [("empty_file", None, None)]),
    ],
)
def test_each_bad_line_is_named_with_openai_code(content: bytes, expected: list[Any]) -> None:
    assert codes(content) == expected


def test_errors_list_every_bad_line_up_to_a_cap() -> None:
    content = jsonl(*[line(f"r{i}", url="/v1/x") if i % 2 else line(f"r{i}") for i in range(2 * MAX_ERRORS + 40)])
    found = codes(content)
    assert len(found) == MAX_ERRORS
    assert [n for _, n, _ in found] == list(range(2, 2 * MAX_ERRORS + 1, 2))


def test_too_many_requests() -> None:
    assert codes(jsonl(line("a"), line("b"), line("c")), max_lines=2) == [("too_many_tasks", None, None)]
    assert codes(jsonl(line("a"), line("b")), max_lines=2) == []


# -- the lines of the output and error files ---------------------------------------------------


@pytest.mark.parametrize("custom_id", TRICKY_IDS)
def test_lines_quote_any_custom_id(custom_id: str) -> None:
    answer = {"id": "chatcmpl-1", "choices": []}
    ok = json.loads(openai_succeeded_line(7, custom_id, answer))
    assert ok["custom_id"] == custom_id and ok["response"]["body"] == answer and ok["error"] is None
    assert ok["id"] == "batch_req_0000000000000007" and ok["response"]["status_code"] == 200
    bad = json.loads(openai_errored_line(7, custom_id, "not_found_error", "model: x", 404))
    assert bad["custom_id"] == custom_id
    assert bad["response"]["status_code"] == 404
    assert bad["response"]["body"] == {
        "error": {"message": "model: x", "type": "invalid_request_error", "param": None, "code": None}
    }
    for kind, stored, code in ((CANCELED, canceled_line, "batch_cancelled"), (EXPIRED, expired_line, "batch_expired")):
        assert json.loads(stored(custom_id)) == {
            "custom_id": custom_id,
            "result": {"type": "canceled" if kind == CANCELED else "expired"},
        }
        made = json.loads(openai_bulk_line(7, kind, stored(custom_id)))
        assert made["custom_id"] == custom_id and made["response"] is None
        assert made["error"]["code"] == code and made["error"]["message"]
        assert made["id"] == ok["id"]


def test_chat_tokens_split_cached_ones() -> None:
    usage = {"prompt_tokens": 100, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 40}}
    assert chat_tokens({"usage": usage}) == (60, 7, 40, 0)
    assert chat_tokens({}) == (0, 0, 0, 0)


# -- Chat Completions -> Messages ----------------------------------------------------------------


def test_a_chat_body_becomes_messages_params() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "system", "content": [{"type": "text", "text": "And kind."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look:"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
            {"role": "user", "content": "Thanks"},
            {"role": "system", "content": "Answer in French."},
        ],
        "max_completion_tokens": 50,
        "max_tokens": 999,
        "stop": "END",
        "temperature": 0.5,
        "tools": [
            {
                "type": "function",
                "function": {"name": "f", "description": "d", "parameters": {"type": "object"}, "strict": True},
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "parallel_tool_calls": False,
        "response_format": {"type": "json_schema", "json_schema": {"name": "o", "schema": {"type": "object"}}},
        "reasoning_effort": "minimal",
        "user": "u1",
        "seed": 3,
        "logit_bias": {"1": 2},
    }
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    result = {"type": "tool_result", "tool_use_id": "call_1", "content": "42"}
    assert messages_params(body) == {
        "model": "m",
        "max_tokens": 50,
        "system": "Be brief.\nAnd kind.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Look:"}, image]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "f", "input": {"x": 1}}]},
            {"role": "user", "content": [result, {"type": "text", "text": "Thanks"}]},
            {"role": "system", "content": "Answer in French."},
        ],
        "temperature": 0.5,
        "stop_sequences": ["END"],
        "tools": [{"name": "f", "input_schema": {"type": "object"}, "description": "d", "strict": True}],
        "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": True},
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}, "effort": "low"},
        "metadata": {"user_id": "u1"},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"n": 2}, "n:"),
        ({"stream": True}, "stream:"),
        ({"logprobs": True}, "logprobs:"),
        ({"modalities": ["text", "audio"]}, "modalities:"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools.0:"),
        ({"response_format": {"type": "grammar"}}, "response_format:"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages.0.content.0:"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages.0.role:"),
        ({"max_completion_tokens": 0}, "max_completion_tokens:"),
    ],
)
def test_what_messages_cannot_say_is_refused(extra: dict[str, Any], says: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(Untranslatable, match=says):
        messages_params(body)


def test_a_message_becomes_a_chat_completion() -> None:
    message = {
        "id": "msg_abc",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "Calling."},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"x": "é"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_read_input_tokens": 3,
            "cache_creation_input_tokens": 2,
        },
    }
    answer = ChatCompletion.model_validate(chat_completion(message, {"model": "asked"}))
    assert answer.id == "chatcmpl-abc" and answer.model == "m" and answer.object == "chat.completion"
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Calling."
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.id == "toolu_1" and call.function.name == "f" and json.loads(call.function.arguments) == {"x": "é"}
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (15, 5, 20)
    assert answer.usage.prompt_tokens_details is not None and answer.usage.prompt_tokens_details.cached_tokens == 3
    for stop_reason, finish in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
    ]:
        made = chat_completion({**message, "content": [], "stop_reason": stop_reason}, {"model": "m"})
        assert made["choices"][0]["finish_reason"] == finish
        assert made["choices"][0]["message"]["content"] == ""


def test_completion_prompt() -> None:
    assert completion_params({"model": "m", "prompt": ["Once"], "stop": ["."]}) == {
        "model": "m",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "Once"}],
        "stop_sequences": ["."],
    }
    for bad in ({"prompt": ["a", "b"]}, {"prompt": [1, 2]}, {"prompt": "a", "echo": True}, {"prompt": "a", "n": 3}):
        with pytest.raises(Untranslatable):
            completion_params({"model": "m", **bad})


# -- the simulator on the OpenAI endpoints --------------------------------------------------------


def run(coro: Any) -> Any:
    return asyncio.run(coro)


SIM = SimulatorBackend()
CONTEXT = CallContext()


def chat(**body: Any) -> ChatCompletion:
    body.setdefault("model", "gpt-test")
    body.setdefault("messages", [{"role": "user", "content": "What is the capital of France?"}])
    raw = run(SIM.create_chat_completion(body, CONTEXT))
    assert msgspec.json.decode(msgspec.json.encode(raw)) == raw  # JSON through and through
    return ChatCompletion.model_validate(raw)


def test_simulated_chat_is_deterministic_and_plausible() -> None:
    first, again = chat(), chat()
    assert first.id == again.id and first.choices[0].message.content == again.choices[0].message.content
    assert first.id.startswith("chatcmpl-") and first.model == "gpt-test"
    text = first.choices[0].message.content
    assert text and text.startswith('Regarding "What is the capital of France?":')
    assert first.choices[0].finish_reason == "stop"
    assert first.usage is not None and first.usage.completion_tokens == len(text.split())
    other = chat(messages=[{"role": "user", "content": "Something else"}])
    assert other.choices[0].message.content != text


def test_simulated_chat_honours_max_tokens_stop_tools_and_schemas() -> None:
    assert chat(max_completion_tokens=3).choices[0].finish_reason == "length"
    short = chat(max_tokens=3)
    assert short.choices[0].message.content and len(short.choices[0].message.content.split()) == 3
    assert short.usage is not None and short.usage.completion_tokens == 3
    stopped = chat(stop=["capital"])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == 'Regarding "What is the '  # cut right before the stop
    properties = {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 7}}
    parameters = {"type": "object", "properties": properties, "required": ["city", "days"]}
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": parameters}}
    called = chat(tools=[weather], tool_choice="required")
    assert called.choices[0].finish_reason == "tool_calls"
    assert called.choices[0].message.tool_calls is not None
    arguments = json.loads(called.choices[0].message.tool_calls[0].function.arguments)
    jsonschema.validate(arguments, parameters)
    named = chat(tools=[weather], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert named.choices[0].message.tool_calls is not None
    assert chat(tools=[weather], tool_choice="none").choices[0].message.tool_calls is None
    schema = {"type": "object", "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}},
              "required": ["answer", "confidence"], "additionalProperties": False}  # fmt: skip
    structured = chat(
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}}
    )
    content = structured.choices[0].message.content
    assert content is not None
    jsonschema.validate(json.loads(content), schema)
    assert isinstance(json.loads(chat(response_format={"type": "json_object"}).choices[0].message.content or ""), dict)


def test_simulated_chat_directives_and_refusals() -> None:
    with pytest.raises(MsgbatchError) as failed:
        chat(messages=[{"role": "user", "content": "[[simulate error=rate_limit_error]]"}])
    assert failed.value.type == "rate_limit_error"
    with pytest.raises(InvalidRequestError, match="n: this backend answers with one choice only"):
        chat(n=2)


def test_simulated_completion() -> None:
    raw = run(SIM.create_completion({"model": "m", "prompt": "Once upon a time", "max_tokens": 5}, CONTEXT))
    answer = Completion.model_validate(raw)
    assert answer.object == "text_completion" and answer.choices[0].finish_reason == "length"
    assert len(answer.choices[0].text.split()) == 5


def test_simulated_embeddings_are_deterministic_unit_vectors() -> None:
    body = {"model": "e", "input": ["a", "b", "a"], "dimensions": 64}
    answer = CreateEmbeddingResponse.model_validate(simulate_embedding(body))
    vectors = [d.embedding for d in answer.data]
    assert [d.index for d in answer.data] == [0, 1, 2]
    assert all(len(v) == 64 and math.isclose(math.fsum(x * x for x in v), 1.0) for v in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    assert simulate_embedding(body) == simulate_embedding(body)
    assert simulate_embedding({**body, "model": "other"})["data"][0]["embedding"] != vectors[0]
    assert len(simulate_embedding({"model": "e", "input": "x"})["data"][0]["embedding"]) == 1536
    assert len(simulate_embedding({"model": "e", "input": [[1, 2, 3]]})["data"]) == 1
    encoded = simulate_embedding({**body, "encoding_format": "base64"})["data"][0]["embedding"]
    decoded = struct.unpack("<64f", base64.b64decode(encoded))
    assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7) for a, b in zip(decoded, vectors[0], strict=True))
    for bad in (
        {"input": None},
        {"input": [1, "a"]},
        {"input": "x", "dimensions": 0},
        {"input": "x", "encoding_format": "hex"},
    ):
        with pytest.raises(InvalidRequestError):
            simulate_embedding({"model": "e", **bad})
