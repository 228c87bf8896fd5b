"""The OpenAI endpoints answered through the Messages API, as pure functions: how an `anthropic`
backend, the simulator and a MockBackend serve `/v1/chat/completions` and `/v1/completions`.

Request (chat completion body -> Messages params):

| Chat Completions | Messages |
|---|---|
| leading `system` / `developer` messages | `system` |
| later `system` / `developer` messages | `role: "system"` messages where they stand |
| `user` content: a string, `text` and `image_url` parts | `text` / `image` blocks (a data URL: base64) |
| `assistant` content and `tool_calls` | `text` and `tool_use` blocks (arguments parsed) |
| `tool` messages | `tool_result` blocks of the next user turn |
| `max_completion_tokens`, else `max_tokens` (else 4096) | `max_tokens` |
| `stop` (a string or a list) | `stop_sequences` |
| `temperature`, `top_p` | the same names |
| `tools` (functions) | `tools` (`parameters` as `input_schema`) |
| `tool_choice` none/auto/required/function | `tool_choice` none/auto/any/tool |
| `parallel_tool_calls: false` | `tool_choice.disable_parallel_tool_use` |
| `response_format` json_schema (json_object: any object) | `output_config.format` json_schema |
| `reasoning_effort` low/medium/high (minimal: low) | `output_config.effort` |
| `user` | `metadata.user_id` |

Sampling knobs with no Messages counterpart (`seed`, `frequency_penalty`, `presence_penalty`,
`logit_bias`, `service_tier`, `store`, `metadata`, …) are left out; what the answer could not
honour faithfully (`n` above 1, `logprobs`, audio, `stream`, non-function tools, web search) is
refused with an `invalid_request_error` saying what, before any backend call.

Answer (Message -> ChatCompletion): text blocks -> `message.content`, `tool_use` blocks ->
`tool_calls` (arguments as JSON), `stop_reason` end_turn/stop_sequence/pause_turn -> `stop`,
max_tokens/model_context_window_exceeded -> `length`, tool_use -> `tool_calls`, refusal ->
`content_filter`; usage -> prompt (input + cached), completion and total tokens. The id is the
Message's (`chatcmpl-` + its suffix), so a deterministic Message makes a deterministic answer.

A text completion (`/v1/completions`) is one user turn holding the prompt (a string, or a list of
exactly one string), with `max_tokens` (default 16, as OpenAI's), `stop`, `temperature`, `top_p`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from msgbatch.backends.base import CallContext
from msgbatch.backends.translate import Untranslatable
from msgbatch.errors import InvalidRequestError

__all__ = [
    "chat_completion",
    "chat_via_messages",
    "completion_via_messages",
    "messages_params",
    "no_embeddings",
    "text_completion",
]

DEFAULT_MAX_TOKENS = 4096
COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions

CreateMessage = Callable[[dict[str, Any], CallContext], Awaitable[dict[str, Any]]]

_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_EFFORT = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "high"}
# Keys that would change what the answer must contain: refused rather than dropped.
_REFUSED = {
    "stream": "stream: streaming is not supported in a batch",
    "logprobs": "logprobs: this backend cannot return log probabilities",
    "top_logprobs": "top_logprobs: this backend cannot return log probabilities",
    "audio": "audio: this backend cannot answer with audio",
    "prediction": "prediction: predicted outputs are not supported by this backend",
    "web_search_options": "web_search_options: web search is not supported by this backend",
    "functions": "functions: use tools (the deprecated functions are not supported by this backend)",
}
_DATA_URL = re.compile(r"data:([\w/+.-]+);base64,(.*)", re.DOTALL)


def _invalid(message: str) -> InvalidRequestError:
    return InvalidRequestError(message)


def _text(content: object, path: str) -> str:
    """A system, developer or tool message's text: a string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise Untranslatable(f"{path}.{i}: only text parts are supported here")
            texts.append(part["text"])
        return "\n".join(texts)
    if content is None:
        return ""
    raise Untranslatable(f"{path}: Input should be a string or a list of content parts")


def _image(part: dict[str, Any], path: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise Untranslatable(f"{path}.image_url.url: Field required")
    data = _DATA_URL.fullmatch(url)
    if data:
        return {"type": "image", "source": {"type": "base64", "media_type": data.group(1), "data": data.group(2)}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _user_blocks(content: object, path: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise Untranslatable(f"{path}: Input should be a string or a list of content parts")
    blocks = []
    for i, part in enumerate(content):
        ptype = part.get("type") if isinstance(part, dict) else None
        if ptype == "text" and isinstance(part.get("text"), str):
            blocks.append({"type": "text", "text": part["text"]})
        elif ptype == "image_url":
            blocks.append(_image(part, f"{path}.{i}"))
        else:
            raise Untranslatable(f"{path}.{i}: a {ptype} part cannot be sent to this backend")
    return blocks


def _tool_use(call: object, path: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise Untranslatable(f"{path}: a tool call needs a function with a name")
    arguments = function.get("arguments")
    try:
        tool_input = json.loads(arguments) if isinstance(arguments, str) and arguments.strip() else {}
    except ValueError:
        raise Untranslatable(f"{path}.function.arguments: not valid JSON") from None
    if not isinstance(tool_input, dict):
        raise Untranslatable(f"{path}.function.arguments: should be a JSON object")
    call_id = call.get("id") if isinstance(call, dict) else None
    return {
        "type": "tool_use",
        "id": call_id if isinstance(call_id, str) and call_id else f"call_{path.replace('.', '_')}",
        "name": function["name"],
        "input": tool_input,
    }


def _messages(chat: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    """The system prompt and the Messages turns; consecutive turns of one role are merged."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if turns and turns[-1]["role"] == role and role != "system":
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for i, message in enumerate(chat):
        path = f"messages.{i}"
        if not isinstance(message, dict):
            raise Untranslatable(f"{path}: Input should be an object")
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            text = _text(content, f"{path}.content")
            if not turns:
                system.append(text)
            elif text:
                turns.append({"role": "system", "content": text})
        elif role == "user":
            add("user", _user_blocks(content, f"{path}.content"))
        elif role == "assistant":
            blocks: list[dict[str, Any]] = []
            text = _text(content, f"{path}.content")
            if text:
                blocks.append({"type": "text", "text": text})
            calls = message.get("tool_calls") or []
            if not isinstance(calls, list):
                raise Untranslatable(f"{path}.tool_calls: Input should be a list")
            blocks += [_tool_use(call, f"{path}.tool_calls.{j}") for j, call in enumerate(calls)]
            if blocks:
                add("assistant", blocks)
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str):
                raise Untranslatable(f"{path}.tool_call_id: Field required")
            result = {"type": "tool_result", "tool_use_id": call_id, "content": _text(content, f"{path}.content")}
            add("user", [result])
        else:
            raise Untranslatable(f"{path}.role: a {role!r} message cannot be sent to this backend")
    if not turns:
        raise Untranslatable("messages: at least one user message is required")
    return "\n".join(t for t in system if t), turns


def _tools(tools: object) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise Untranslatable("tools: Input should be a list")
    out = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise Untranslatable(f"tools.{i}: only function tools can be sent to this backend, not {kind!r}")
        schema = function.get("parameters")
        converted: dict[str, Any] = {
            "name": function["name"],
            "input_schema": schema if isinstance(schema, dict) else {"type": "object", "properties": {}},
        }
        if isinstance(function.get("description"), str):
            converted["description"] = function["description"]
        if function.get("strict") is True:
            converted["strict"] = True
        out.append(converted)
    return out


def _tool_choice(choice: object) -> dict[str, Any]:
    if choice in ("none", "auto"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if isinstance(name, str):
            return {"type": "tool", "name": name}
    raise Untranslatable(f"tool_choice: {choice!r} cannot be sent to this backend")


def _response_format(fmt: object) -> dict[str, Any] | None:
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_schema", "schema": {"type": "object"}}
    if fmt["type"] == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return {"type": "json_schema", "schema": schema if isinstance(schema, dict) else {"type": "object"}}
    raise Untranslatable(f"response_format: the type {fmt['type']!r} cannot be sent to this backend")


def _stop(stop: object) -> list[str] | None:
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise Untranslatable("stop: Input should be a string or a list of strings")


def _max_tokens(body: dict[str, Any], default: int) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise Untranslatable(f"{key}: must be an integer of at least 1")
            return value
    return default


def messages_params(body: dict[str, Any]) -> dict[str, Any]:
    """The Messages params that ask what a chat completion body asks; raises Untranslatable."""
    for key, why in _REFUSED.items():
        if body.get(key):
            raise Untranslatable(why)
    n = body.get("n")
    if n is not None and n != 1:
        raise Untranslatable("n: this backend answers with one choice only")
    modalities = body.get("modalities")
    if isinstance(modalities, list) and any(m != "text" for m in modalities):
        raise Untranslatable("modalities: this backend answers with text only")
    chat = body.get("messages")
    if not isinstance(chat, list):
        raise Untranslatable("messages: Field required")
    system, turns = _messages(chat)
    params: dict[str, Any] = {
        "model": body["model"],
        "max_tokens": _max_tokens(body, DEFAULT_MAX_TOKENS),
        "messages": turns,
    }
    if system:
        params["system"] = system
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            params[key] = body[key]
    stop = _stop(body.get("stop"))
    if stop:
        params["stop_sequences"] = stop
    tools = body.get("tools")
    if tools:
        params["tools"] = _tools(tools)
        choice = body.get("tool_choice")
        if choice is not None:
            params["tool_choice"] = _tool_choice(choice)
        if body.get("parallel_tool_calls") is False:
            params.setdefault("tool_choice", {"type": "auto"})["disable_parallel_tool_use"] = True
    output_config: dict[str, Any] = {}
    fmt = _response_format(body.get("response_format"))
    if fmt is not None:
        output_config["format"] = fmt
    effort = body.get("reasoning_effort")
    if isinstance(effort, str) and effort in _EFFORT:
        output_config["effort"] = _EFFORT[effort]
    if output_config:
        params["output_config"] = output_config
    if isinstance(body.get("user"), str):
        params["metadata"] = {"user_id": body["user"]}
    return params


def _usage(message: dict[str, Any]) -> dict[str, Any]:
    usage = message.get("usage") if isinstance(message.get("usage"), dict) else {}
    assert isinstance(usage, dict)

    def count(key: str) -> int:
        value = usage.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

    cached, written = count("cache_read_input_tokens"), count("cache_creation_input_tokens")
    prompt = count("input_tokens") + cached + written
    completion = count("output_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def _completion_id(message: dict[str, Any], prefix: str) -> str:
    message_id = message.get("id")
    suffix = message_id.removeprefix("msg_") if isinstance(message_id, str) and message_id else str(time.time_ns())
    return prefix + suffix


def _model(message: dict[str, Any], body: dict[str, Any]) -> str:
    model = message.get("model")
    return model if isinstance(model, str) and model else str(body.get("model", ""))


def chat_completion(message: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """The ChatCompletion a Message makes, answering `body`."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.get("content") or ():
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
            function = {"name": block.get("name"), "arguments": arguments}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
        "annotations": [],
    }
    if calls:
        reply["tool_calls"] = calls
    finish = _FINISH.get(str(message.get("stop_reason")), "stop")
    return {
        "id": _completion_id(message, "chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": _model(message, body),
        "choices": [{"index": 0, "message": reply, "logprobs": None, "finish_reason": finish}],
        "usage": _usage(message),
        "system_fingerprint": None,
    }


def completion_params(body: dict[str, Any]) -> dict[str, Any]:
    """The Messages params for a text completion body; raises Untranslatable."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise Untranslatable("prompt: this backend takes one prompt, a string")
    for key in ("stream", "logprobs", "echo", "suffix"):
        if body.get(key):
            raise Untranslatable(f"{key}: not supported by this backend")
    n = body.get("n")
    if (n is not None and n != 1) or body.get("best_of", 1) != 1:
        raise Untranslatable("n: this backend answers with one choice only")
    params: dict[str, Any] = {
        "model": body["model"],
        "max_tokens": _max_tokens(body, COMPLETION_MAX_TOKENS),
        "messages": [{"role": "user", "content": prompt or " "}],
    }
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            params[key] = body[key]
    stop = _stop(body.get("stop"))
    if stop:
        params["stop_sequences"] = stop
    return params


def text_completion(message: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """The text Completion a Message makes, answering `body`."""
    text = "".join(
        b["text"] for b in message.get("content") or () if isinstance(b, dict) and isinstance(b.get("text"), str)
    )
    finish = _FINISH.get(str(message.get("stop_reason")), "stop")
    usage = _usage(message)
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop" if finish == "tool_calls" else finish}
    return {
        "id": _completion_id(message, "cmpl-"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": _model(message, body),
        "choices": [choice],
        "usage": {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
        "system_fingerprint": None,
    }


async def chat_via_messages(
    create_message: CreateMessage, body: dict[str, Any], context: CallContext
) -> dict[str, Any]:
    """Answer a chat completion body with a Messages call (`create_message` of a backend)."""
    try:
        params = messages_params(body)
    except Untranslatable as exc:
        raise _invalid(str(exc)) from None
    return chat_completion(await create_message(params, context), body)


async def completion_via_messages(
    create_message: CreateMessage, body: dict[str, Any], context: CallContext
) -> dict[str, Any]:
    """Answer a text completion body with a Messages call."""
    try:
        params = completion_params(body)
    except Untranslatable as exc:
        raise _invalid(str(exc)) from None
    return text_completion(await create_message(params, context), body)


def no_embeddings(backend: str, kind: str) -> InvalidRequestError:
    """What a backend that serves no embeddings answers an embeddings request."""
    return _invalid(
        f"/v1/embeddings: backend {backend!r} ({kind}) does not serve embeddings; "
        "route this model to an openai backend or to the simulator"
    )
