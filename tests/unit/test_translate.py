"""Messages <-> Chat Completions translation, as pure functions."""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.types import Message

from msgbatch.backends.translate import Untranslatable, from_chat_completion, to_chat_completion
from msgbatch.errors import MsgbatchError

MODEL = "llama-3.1-8b"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def params(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}
    body.update(extra)
    return body


def completion(message: dict[str, Any], finish: str | None = "stop", **choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "model": MODEL,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }


def strict(message: dict[str, Any]) -> Message:
    return Message.model_validate(message, strict=True)


# --- requests ---------------------------------------------------------------------------------


def test_text_and_sampling_parameters() -> None:
    body = to_chat_completion(
        params(temperature=0.3, top_p=0.9, top_k=20, stop_sequences=["END", "\n\n"], metadata={"user_id": "u-1"})
    )
    assert body == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 100,
        "temperature": 0.3,
        "top_p": 0.9,
        "top_k": 20,
        "stop": ["END", "\n\n"],
        "user": "u-1",
    }


def test_system_string_and_blocks() -> None:
    assert to_chat_completion(params(system="Be brief."))["messages"][0] == {"role": "system", "content": "Be brief."}
    blocks = [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind.", "cache_control": {}}]
    assert to_chat_completion(params(system=blocks))["messages"][0] == {
        "role": "system",
        "content": "Be brief.\nBe kind.",
    }
    assert to_chat_completion(params(system=""))["messages"][0]["role"] == "user"


def test_text_blocks_and_images() -> None:
    content = [
        {"type": "text", "text": "What is in these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    body = to_chat_completion(params(messages=[{"role": "user", "content": content}]))
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        }
    ]
    # One text block is sent as a plain string: every server takes that.
    single = to_chat_completion(params(messages=[{"role": "user", "content": [{"type": "text", "text": "Yo"}]}]))
    assert single["messages"] == [{"role": "user", "content": "Yo"}]


def test_tools_tool_choice_and_a_tool_round() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C"},
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]
    body = to_chat_completion(params(messages=messages, tools=[WEATHER], tool_choice={"type": "auto"}))
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["input_schema"],
                "description": "The weather in a city",
            },
        }
    ]
    assert body["tool_choice"] == "auto"
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18 C"},
        {"role": "user", "content": "And tomorrow?"},
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: object) -> None:
    assert to_chat_completion(params(tools=[WEATHER], tool_choice=choice))["tool_choice"] == expected


def test_parallel_tool_use_and_tool_only_turns() -> None:
    choice = {"type": "any", "disable_parallel_tool_use": True}
    messages = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "sunny"}]},
                {"type": "tool_result", "tool_use_id": "t2", "is_error": True, "content": "boom"},
            ],
        },
    ]
    body = to_chat_completion(params(messages=messages, tools=[WEATHER], tool_choice=choice))
    assert body["parallel_tool_calls"] is False
    assert body["messages"][1]["content"] is None
    assert body["messages"][2:] == [
        {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "t2", "content": "Error: boom"},
    ]


def test_model_override_and_output_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = to_chat_completion(params(output_format={"type": "json_schema", "schema": schema}), model="qwen")
    assert body["model"] == "qwen"
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}


def test_unknown_harmless_keys_are_left_out() -> None:
    body = to_chat_completion(params(service_tier="auto", thinking={"type": "enabled"}, web_search={"x": 1}))
    assert set(body) == {"model", "messages", "max_tokens"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages.0.content.0: a document block cannot be sent",
        ),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0: the server tool"),
        ({"mcp_servers": [{"url": "x"}]}, "mcp_servers"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}
                ]
            },
            "an image of source type file",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "t",
                                "content": [{"type": "image", "source": {"type": "base64"}}],
                            }
                        ],
                    }
                ]
            },
            "a image block cannot be sent",
        ),
        ({"tool_choice": {"type": "tool", "name": "nope"}}, "tool nope is not in tools"),
    ],
)
def test_untranslatable(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(Untranslatable, match=message):
        to_chat_completion(params(**extra))


# --- answers ----------------------------------------------------------------------------------


def test_text_answer() -> None:
    message = from_chat_completion(completion({"role": "assistant", "content": "Paris."}), params())
    strict(message)
    assert message["content"] == [{"type": "text", "text": "Paris."}]
    assert message["stop_reason"] == "end_turn" and message["stop_sequence"] is None
    assert message["usage"] == {
        "input_tokens": 12,
        "output_tokens": 5,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "service_tier": "batch",
    }
    assert message["id"].startswith("msg_") and message["model"] == MODEL


def test_tool_call_answer() -> None:
    call = {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    answer = completion({"role": "assistant", "content": "Checking.", "tool_calls": [call]}, "tool_calls")
    message = from_chat_completion(answer, params(tools=[WEATHER]))
    strict(message)
    assert message["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_9", "name": "get_weather", "input": {"city": "Oslo"}},
    ]
    assert message["stop_reason"] == "tool_use"
    # Some servers say "stop" even when they called a tool.
    answer = completion({"role": "assistant", "content": None, "tool_calls": [call]}, "stop")
    assert from_chat_completion(answer, params())["stop_reason"] == "tool_use"


def test_tool_call_with_bad_arguments_is_an_error() -> None:
    call = {"id": "c", "function": {"name": "get_weather", "arguments": "{city: Oslo"}}
    with pytest.raises(MsgbatchError) as caught:
        from_chat_completion(completion({"role": "assistant", "tool_calls": [call]}, "tool_calls"), params())
    assert caught.value.type == "api_error" and not caught.value.retryable


@pytest.mark.parametrize(
    ("finish", "extra", "reason", "sequence"),
    [
        ("stop", {}, "end_turn", None),
        ("length", {}, "max_tokens", None),
        ("content_filter", {}, "refusal", None),
        (None, {}, "end_turn", None),
        ("stop", {"stop_reason": "END"}, "stop_sequence", "END"),  # vLLM names the matched string
        ("stop", {"stop_reason": 2}, "end_turn", None),  # ... or the EOS token id
    ],
)
def test_stop_reasons(finish: str | None, extra: dict[str, Any], reason: str, sequence: str | None) -> None:
    answer = completion({"role": "assistant", "content": "x"}, finish, **extra)
    message = from_chat_completion(answer, params(stop_sequences=["END"]))
    strict(message)
    assert (message["stop_reason"], message["stop_sequence"]) == (reason, sequence)


def test_cached_tokens_and_reasoning() -> None:
    answer = completion({"role": "assistant", "content": "42", "reasoning_content": "think think"})
    answer["usage"]["prompt_tokens_details"] = {"cached_tokens": 8}
    message = from_chat_completion(answer, params(thinking={"type": "enabled", "budget_tokens": 1024}))
    strict(message)
    assert message["content"][0] == {"type": "thinking", "thinking": "think think", "signature": ""}
    assert message["usage"]["input_tokens"] == 4 and message["usage"]["cache_read_input_tokens"] == 8
    # Without thinking asked for, reasoning stays out.
    assert from_chat_completion(answer, params())["content"] == [{"type": "text", "text": "42"}]


@pytest.mark.parametrize(
    "answer",
    [{}, {"choices": []}, {"choices": [{"finish_reason": "stop"}]}, {"choices": [{"message": {"tool_calls": [1]}}]}],
)
def test_malformed_answers_are_retryable(answer: dict[str, Any]) -> None:
    with pytest.raises(MsgbatchError) as caught:
        from_chat_completion(answer, params())
    assert caught.value.type == "api_error" and caught.value.retryable


# --- the current SDK's shapes -----------------------------------------------------------------


def test_system_messages_in_place() -> None:
    body = to_chat_completion(
        params(
            system="Be brief.",
            messages=[
                {"role": "user", "content": "Hi"},
                {
                    "role": "system",
                    "content": [{"type": "text", "text": "Answer"}, {"type": "text", "text": "in French"}],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "D'accord"}]},
                {"role": "system", "content": "Shown once", "clear_at": "next_user_message"},
                {"role": "user", "content": "Why?"},
                {"role": "system", "content": "Still shown", "clear_at": "never"},
                {"role": "system", "output_config": {"effort": "medium"}},
            ],
        )
    )
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": "Answer\nin French"},  # not an assistant turn: a system message
        {"role": "assistant", "content": "D'accord"},
        {"role": "user", "content": "Why?"},
        {"role": "system", "content": "Still shown"},
    ]
    assert body["reasoning_effort"] == "medium"  # the system message's, for the turn after it


@pytest.mark.parametrize(
    ("config", "effort"),
    [
        ({"effort": "low"}, "low"),
        ({"effort": "high"}, "high"),
        ({"effort": "xhigh"}, "high"),
        ({"effort": "max"}, "high"),
        ({"effort": None}, None),
        ({}, None),
    ],
)
def test_effort(config: dict[str, Any], effort: str | None) -> None:
    assert to_chat_completion(params(output_config=config)).get("reasoning_effort") == effort


def test_structured_outputs_and_strict_tools() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    expected = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    body = to_chat_completion(params(output_config={"format": {"type": "json_schema", "schema": schema}}))
    assert body["response_format"] == expected
    # The older top-level output_format keeps working; output_config.format wins over it.
    assert to_chat_completion(params(output_format={"type": "json_schema", "schema": schema}))["response_format"] == (
        expected
    )
    both = params(output_config={"format": {"type": "json_schema", "schema": schema}}, output_format={"type": "x"})
    assert to_chat_completion(both)["response_format"] == expected
    tool = {**WEATHER, "strict": True}
    assert to_chat_completion(params(tools=[tool]))["tools"][0]["function"]["strict"] is True


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"compaction": {"type": "summarize"}}, "compaction: compaction .* cannot be sent"),
        ({"thread": {"type": "continue", "previous_message_id": "msg_1"}}, "thread: thread .* cannot be sent"),
        (
            {"context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]}},
            "context_management: context_management .* cannot be sent",
        ),
        ({"output_config": {"task_budget": {"type": "tokens", "total": 1000}}}, "output_config.task_budget"),
        (
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "system", "content": [{"type": "tool_addition", "tool": {"type": "tool_reference"}}]},
                ]
            },
            "messages.1.content.0: a tool_addition block cannot be sent",
        ),
        (
            {
                "messages": [
                    {
                        "role": "system",
                        "content": [{"type": "tool_removal", "tool": {}}],
                        "clear_at": "next_user_message",
                    },
                    {"role": "user", "content": "Hi"},
                ]
            },
            "messages.0.content.0: a tool_removal block cannot be sent",  # hidden text, lasting tool change
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "compaction", "content": "summary"}]}]},
            "messages.0.content.0: a compaction block cannot be sent",
        ),
    ],
)
def test_untranslatable_beta_features_say_what(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(Untranslatable, match=message):
        to_chat_completion(params(**extra))


def test_features_that_only_change_how_a_request_runs_are_left_out() -> None:
    body = to_chat_completion(
        params(
            speed="fast",
            inference_geo="us",
            diagnostics={"previous_message_id": None},
            billing_policy={"type": "billing_policy", "bill_to": "self"},
            fallbacks="default",
            cache_control={"type": "ephemeral"},
            user_profile_id="up_1",
            context_management=None,
        )
    )
    assert set(body) == {"model", "messages", "max_tokens"}


def test_sglang_names_the_matched_stop_sequence() -> None:
    answer = completion({"role": "assistant", "content": "Paris"}, "stop", matched_stop="END")
    message = from_chat_completion(answer, params(stop_sequences=["END"]))
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "END")
    # A token id (SGLang's matched EOS) is not a stop sequence.
    answer = completion({"role": "assistant", "content": "Paris"}, "stop", matched_stop=128009)
    assert from_chat_completion(answer, params(stop_sequences=["END"]))["stop_reason"] == "end_turn"
