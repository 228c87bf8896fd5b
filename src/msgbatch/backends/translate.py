"""Messages API <-> Chat Completions, both ways, as pure functions.

Request (Messages params -> chat completion body):

| Messages | Chat Completions |
|---|---|
| `system` (string or text blocks) | a first `system` message |
| `role: "system"` messages in `messages` | `system` messages in place (see below) |
| `text` / `image` (base64 or url) blocks | a string, or `text` / `image_url` parts |
| assistant `tool_use` blocks | the assistant message's `tool_calls` (arguments as JSON) |
| user `tool_result` blocks | `tool` messages, before the rest of that user turn |
| `tools`, `tool_choice` auto/any/tool/none | `tools` (functions), `tool_choice` auto/required/function/none |
| `tool_choice.disable_parallel_tool_use` | `parallel_tool_calls: false` |
| `max_tokens`, `temperature`, `top_p`, `top_k` | the same names |
| `stop_sequences`, `metadata.user_id` | `stop`, `user` |
| `output_config.format` (or the older `output_format`), JSON schema | `response_format` json_schema |
| `output_config.effort` (or a system message's) | `reasoning_effort` (`xhigh`, `max` -> `high`) |
| a custom tool's `strict: true` | the function's `strict: true` |

A mid-conversation system message goes where it stands, its text blocks joined; one with
`clear_at: "next_user_message"` is left out once a later user message exists (the model no longer
sees it), and the effort of the last system message after the last user message is the turn's.
`thinking` blocks of earlier assistant turns are dropped (a chat server cannot check them), and
`thinking` itself only decides whether a reasoning answer comes back as a `thinking` block.
Keys that change how a request is run or billed but not what it asks (`cache_control`,
`service_tier`, `speed`, `inference_geo`, `diagnostics`, `billing_policy`, `fallbacks`, …) are
left out. Anything whose meaning would be lost — documents, server tools, MCP servers, images
inside tool results, search results, and the beta features `compaction`, `thread`,
`context_management`, `output_config.task_budget`, mid-conversation tool changes — raises
`Untranslatable`, which the backend reports as an `invalid_request_error` result saying what.

Answer (chat completion -> Message): text content -> a `text` block, `tool_calls` -> `tool_use`
blocks with their arguments parsed, reasoning -> a `thinking` block when thinking was asked for,
`finish_reason` `stop` -> `end_turn` (or `stop_sequence` when the server names the sequence that
matched: vLLM's `stop_reason`, SGLang's `matched_stop`), `length` -> `max_tokens`, `tool_calls`
-> `tool_use`, `content_filter` -> `refusal`; usage -> input/output tokens, cached prompt tokens
-> `cache_read_input_tokens`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from msgbatch.backends.http import malformed
from msgbatch.errors import InternalServerError
from msgbatch.ids import new_message_id

__all__ = ["Untranslatable", "from_chat_completion", "to_chat_completion"]


class Untranslatable(Exception):
    """The request means something a Chat Completions server cannot be asked."""


_FINISH = {
    "stop": "end_turn",
    "eos": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_IGNORED_BLOCKS = frozenset({"thinking", "redacted_thinking"})
# Top-level keys whose meaning a chat completion cannot carry: refused rather than dropped.
_UNTRANSLATABLE_KEYS = {
    "mcp_servers": "mcp_servers",
    "container": "container",
    "compaction": "compaction (the beta compaction request)",
    "thread": "thread (server-held conversation state)",
    "context_management": "context_management (context editing)",
}
# Chat Completions' reasoning_effort stops at `high` on most servers.
_EFFORT = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}


def _no(path: str, what: str) -> Untranslatable:
    return Untranslatable(f"{path}: {what} cannot be sent to an OpenAI-compatible backend")


def _text_of_blocks(blocks: list[Any], path: str, *, allow_images: bool = False) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        btype = block.get("type")
        if btype == "text":
            parts.append({"type": "text", "text": block["text"]})
        elif btype == "image" and allow_images:
            parts.append(_image(block, f"{path}.{j}"))
        else:
            raise _no(f"{path}.{j}", f"a {btype} block")
    return parts


def _image(block: dict[str, Any], path: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise Untranslatable(f"{path}.source: Field required")
    stype = source.get("type")
    if stype == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or not isinstance(data, str):
            raise Untranslatable(f"{path}.source: a base64 image needs media_type and data")
        url = f"data:{media_type};base64,{data}"
    elif stype == "url":
        link = source.get("url")
        if not isinstance(link, str):
            raise Untranslatable(f"{path}.source.url: Field required")
        url = link
    else:
        raise _no(f"{path}.source", f"an image of source type {stype}")
    return {"type": "image_url", "image_url": {"url": url}}


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """One text part as a plain string (every server takes that); otherwise the parts."""
    if len(parts) == 1 and parts[0]["type"] == "text":
        text: str = parts[0]["text"]
        return text
    return parts


def _tool_result(block: dict[str, Any], path: str) -> dict[str, Any]:
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str):
        raise Untranslatable(f"{path}.tool_use_id: Field required")
    inner = block.get("content")
    if inner is None:
        text = ""
    elif isinstance(inner, str):
        text = inner
    elif isinstance(inner, list):
        text = "\n".join(p["text"] for p in _text_of_blocks(inner, f"{path}.content"))
    else:
        raise Untranslatable(f"{path}.content: Input should be a valid string or a list of content blocks")
    if block.get("is_error"):
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": tool_use_id, "content": text}


def _tool_call(block: dict[str, Any], path: str) -> dict[str, Any]:
    call_id, name = block.get("id"), block.get("name")
    if not isinstance(call_id, str) or not isinstance(name, str):
        raise Untranslatable(f"{path}: a tool_use block needs id and name")
    arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _system_message(message: dict[str, Any], path: str) -> dict[str, Any] | None:
    """A mid-conversation system message as a Chat Completions `system` message (None: no text)."""
    content = message.get("content")
    if content is None:
        return None
    if isinstance(content, str):
        text = content
    else:
        text = "\n".join(p["text"] for p in _text_of_blocks(content, f"{path}.content"))
    return {"role": "system", "content": text} if text else None


def _shown(messages: list[Any]) -> list[bool]:
    """Which messages the model sees: a system message with `clear_at: "next_user_message"` is
    not once a later user message exists."""
    shown = [True] * len(messages)
    user_seen = False
    for i in range(len(messages) - 1, -1, -1):
        role = messages[i]["role"]
        if role == "user":
            user_seen = True
        elif role == "system" and user_seen and messages[i].get("clear_at") == "next_user_message":
            shown[i] = False
    return shown


def _messages(params: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    system = params.get("system")
    if isinstance(system, str):
        if system:
            out.append({"role": "system", "content": system})
    elif isinstance(system, list) and system:
        parts = _text_of_blocks(system, "system")
        out.append({"role": "system", "content": "\n".join(p["text"] for p in parts)})
    messages = params["messages"]
    for i, (message, shown) in enumerate(zip(messages, _shown(messages), strict=True)):
        role = message["role"]
        if role == "system":
            # Translated even when hidden: its tool changes (untranslatable) outlive its text.
            system_turn = _system_message(message, f"messages.{i}")
            if shown and system_turn is not None:
                out.append(system_turn)
            continue
        content = message["content"]
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        path = f"messages.{i}.content"
        if role == "user":
            parts = []
            for j, block in enumerate(content):
                btype = block["type"]
                if btype == "tool_result":
                    # A tool message must follow the assistant turn that called the tool.
                    out.append(_tool_result(block, f"{path}.{j}"))
                elif btype == "text":
                    parts.append({"type": "text", "text": block["text"]})
                elif btype == "image":
                    parts.append(_image(block, f"{path}.{j}"))
                else:
                    raise _no(f"{path}.{j}", f"a {btype} block")
            if parts:
                out.append({"role": "user", "content": _content(parts)})
        else:
            texts: list[str] = []
            calls: list[dict[str, Any]] = []
            for j, block in enumerate(content):
                btype = block["type"]
                if btype == "text":
                    texts.append(block["text"])
                elif btype == "tool_use":
                    calls.append(_tool_call(block, f"{path}.{j}"))
                elif btype not in _IGNORED_BLOCKS:
                    raise _no(f"{path}.{j}", f"a {btype} block")
            turn: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
            if calls:
                turn["tool_calls"] = calls
            out.append(turn)
    return out


def _effort(params: dict[str, Any]) -> str | None:
    """The effort of the turn being generated: that of the last system message after the last
    user message that sets one, else the top-level `output_config.effort`."""
    for message in reversed(params["messages"]):
        role = message["role"]
        if role == "user":
            break
        config = message.get("output_config") if role == "system" else None
        if isinstance(config, dict) and config.get("effort") is not None:
            return str(config["effort"])
    config = params.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    return str(effort) if effort is not None else None


def _response_format(params: dict[str, Any]) -> dict[str, Any] | None:
    config = params.get("output_config")
    fmt, where = (config.get("format"), "output_config.format") if isinstance(config, dict) else (None, "")
    if fmt is None:
        fmt, where = params.get("output_format"), "output_format"
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise _no(where, f"this {where}")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt.get("schema") or {}}}


def _tools(tools: list[Any]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        ttype = tool.get("type")
        if ttype not in (None, "custom"):
            raise _no(f"tools.{i}", f"the server tool {ttype}")
        function: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        if tool.get("strict") is True:
            function["strict"] = True
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: dict[str, Any]) -> str | dict[str, Any]:
    ctype = choice["type"]
    if ctype == "any":
        return "required"
    if ctype == "tool":
        return {"type": "function", "function": {"name": choice["name"]}}
    return str(ctype)  # auto, none


def to_chat_completion(params: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    """The Chat Completions body for a (validated) Messages request; raises Untranslatable."""
    try:
        return _to_chat_completion(params, model)
    except Untranslatable:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        # Validation ran first, so this is a shape it lets through and the translation does not.
        raise Untranslatable(f"request cannot be translated for an OpenAI-compatible backend ({exc!r})") from None


def _to_chat_completion(params: dict[str, Any], model: str | None) -> dict[str, Any]:
    for key, what in _UNTRANSLATABLE_KEYS.items():
        if params.get(key):
            raise _no(key, what)
    config = params.get("output_config")
    if isinstance(config, dict) and config.get("task_budget") is not None:
        raise _no("output_config.task_budget", "a task budget")
    body: dict[str, Any] = {
        "model": model or params["model"],
        "messages": _messages(params),
        "max_tokens": params["max_tokens"],
    }
    for key in ("temperature", "top_p", "top_k"):
        if params.get(key) is not None:
            body[key] = params[key]
    stop = params.get("stop_sequences")
    if stop:
        body["stop"] = list(stop)
    tools = params.get("tools")
    choice = params.get("tool_choice")
    if tools:
        body["tools"] = _tools(tools)
        if choice is not None:
            body["tool_choice"] = _tool_choice(choice)
            if choice.get("disable_parallel_tool_use"):
                body["parallel_tool_calls"] = False
    elif choice is not None and choice.get("type") == "tool":
        raise Untranslatable(f"tool_choice: tool {choice.get('name')} is not in tools")
    metadata = params.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        body["user"] = metadata["user_id"]
    response_format = _response_format(params)
    if response_format is not None:
        body["response_format"] = response_format
    effort = _effort(params)
    if effort is not None:
        if effort not in _EFFORT:
            raise _no("output_config.effort", f"the effort {effort!r}")
        body["reasoning_effort"] = _EFFORT[effort]
    return body


# --- the answer ---------------------------------------------------------------------------------


def _int(value: object) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value:
        return int(value)
    return 0


def _answer_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some servers answer in parts
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _tool_use(call: object, backend: str) -> dict[str, Any]:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise malformed(backend, "a tool call without a function")
    function = call["function"]
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise malformed(backend, "a tool call without a name")
    arguments = function.get("arguments")
    if isinstance(arguments, dict):
        tool_input = arguments
    elif arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        tool_input = {}
    elif isinstance(arguments, str):
        try:
            tool_input = json.loads(arguments)
        except ValueError:
            raise InternalServerError(
                f"the model called tool {name} with arguments that are not JSON: {arguments[:200]}", retryable=False
            ) from None
        if not isinstance(tool_input, dict):
            raise InternalServerError(
                f"the model called tool {name} with arguments that are not an object", retryable=False
            )
    else:
        raise malformed(backend, "tool call arguments")
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        call_id = "toolu_" + os.urandom(12).hex()
    return {"type": "tool_use", "id": call_id, "name": name, "input": tool_input}


def from_chat_completion(answer: dict[str, Any], params: dict[str, Any], backend: str = "openai") -> dict[str, Any]:
    """The Message for a chat completion answering `params`; a body that is not a chat
    completion raises a retryable InternalServerError."""
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise malformed(backend, "no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise malformed(backend, "a choice without a message")

    content: list[dict[str, Any]] = []
    thinking = params.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = _answer_text(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    if not calls and isinstance(message.get("function_call"), dict):  # the legacy shape
        calls = [{"function": message["function_call"]}]
    if isinstance(calls, list):
        content.extend(_tool_use(call, backend) for call in calls)

    finish = choice.get("finish_reason")
    stop_reason = _FINISH.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"
    stop_sequence = None
    if any(block["type"] == "tool_use" for block in content):
        stop_reason = "tool_use"
    elif stop_reason == "end_turn":
        # The stop string that ended the answer: vLLM's `stop_reason`, SGLang's `matched_stop`.
        for key in ("stop_reason", "matched_stop"):
            matched = choice.get(key)
            if isinstance(matched, str) and matched in (params.get("stop_sequences") or ()):
                stop_reason, stop_sequence = "stop_sequence", matched
                break

    usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
    assert isinstance(usage, dict)
    prompt = _int(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    cached = min(max(cached, 0), prompt)
    model = answer.get("model")
    return {
        "id": new_message_id(),
        "type": "message",
        "role": "assistant",
        "model": model if isinstance(model, str) and model else params.get("model", ""),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": prompt - cached,
            "output_tokens": _int(usage.get("completion_tokens")),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached,
            "service_tier": "batch",
        },
    }
