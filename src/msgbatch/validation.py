"""Checks one batch request's `params` the way the Messages API would.

Runs once per request (up to 100,000 per batch), so it is plain `isinstance` checks and
returns the first problem found as a message in the API's style, field path first
(`messages.0.role: Input should be 'user' or 'assistant'`). Keys it does not know pass
untouched: the documents use top-level `web_search`, `citations`, `code_execution` objects and
newer API fields must reach the backend. An optional key set to `null` counts as absent.
"""

from __future__ import annotations

from typing import Any

__all__ = ["validate_params"]

_REQUIRED = "Field required"
_STR = "Input should be a valid string"
_INT = "Input should be a valid integer"
_NUM = "Input should be a valid number"
_BOOL = "Input should be a valid boolean"
_LIST = "Input should be a valid list"
_OBJ = "Input should be a valid dictionary or object"
_GE1 = "must be greater than or equal to 1"
_STR_OR_BLOCKS = "Input should be a valid string or a list of content blocks"

_ROLES = frozenset({"user", "assistant"})
_TOOL_CHOICE_TYPES = frozenset({"auto", "any", "tool", "none"})
# `between_tools` is in the SDK's ThinkingConfigParam union, so a drop-in must take it too.
_THINKING_TYPES = frozenset({"enabled", "disabled", "adaptive", "between_tools"})


def _is_int(value: object) -> bool:
    # bool is a subclass of int, and `"max_tokens": true` is not a token count.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_blocks(blocks: list[Any], path: str) -> str | None:
    """A list of content blocks: each an object with a string `type`; text blocks need text."""
    for i, block in enumerate(blocks):
        if not isinstance(block, dict):
            return f"{path}.{i}: {_OBJ}"
        btype = block.get("type")
        if btype is None:
            return f"{path}.{i}.type: {_REQUIRED}"
        if not isinstance(btype, str):
            return f"{path}.{i}.type: {_STR}"
        if btype == "text":
            text = block.get("text")
            if text is None:
                return f"{path}.{i}.text: {_REQUIRED}"
            if not isinstance(text, str):
                return f"{path}.{i}.text: {_STR}"
    return None


def _check_messages(messages: object) -> str | None:
    if not isinstance(messages, list):
        return f"messages: {_LIST}"
    if not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages.{i}: {_OBJ}"
        role = message.get("role")
        if role is None:
            return f"messages.{i}.role: {_REQUIRED}"
        if role not in _ROLES:
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = message.get("content")
        if content is None:
            return f"messages.{i}.content: {_REQUIRED}"
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            return f"messages.{i}.content: {_STR_OR_BLOCKS}"
        err = _check_blocks(content, f"messages.{i}.content")
        if err is not None:
            return err
    return None


def _check_tools(tools: object) -> str | None:
    if not isinstance(tools, list):
        return f"tools: {_LIST}"
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            return f"tools.{i}: {_OBJ}"
        ttype = tool.get("type")
        if ttype is not None and not isinstance(ttype, str):
            return f"tools.{i}.type: {_STR}"
        if ttype is not None and ttype != "custom":
            # Server tools (web_search_20250305, bash_…, text_editor_…) have their own shapes.
            continue
        name = tool.get("name")
        if name is None:
            return f"tools.{i}.name: {_REQUIRED}"
        if not isinstance(name, str):
            return f"tools.{i}.name: {_STR}"
        schema = tool.get("input_schema")
        if schema is None:
            return f"tools.{i}.input_schema: {_REQUIRED}"
        if not isinstance(schema, dict):
            return f"tools.{i}.input_schema: {_OBJ}"
    return None


def _check_tool_choice(choice: object) -> str | None:
    if not isinstance(choice, dict):
        return f"tool_choice: {_OBJ}"
    ctype = choice.get("type")
    if ctype is None:
        return f"tool_choice.type: {_REQUIRED}"
    if ctype not in _TOOL_CHOICE_TYPES:
        return "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'"
    if ctype == "tool":
        name = choice.get("name")
        if name is None:
            return f"tool_choice.name: {_REQUIRED}"
        if not isinstance(name, str):
            return f"tool_choice.name: {_STR}"
    return None


def _check_thinking(thinking: object) -> str | None:
    if not isinstance(thinking, dict):
        return f"thinking: {_OBJ}"
    ttype = thinking.get("type")
    if ttype is None:
        return f"thinking.type: {_REQUIRED}"
    if ttype not in _THINKING_TYPES:
        return "thinking.type: Input should be 'enabled', 'disabled', 'adaptive' or 'between_tools'"
    # The hosted API requires budget_tokens with "enabled"; the source documents omit it and
    # their examples must run, so only a budget that is present is checked.
    budget = thinking.get("budget_tokens")
    if budget is not None:
        if not _is_int(budget):
            return f"thinking.budget_tokens: {_INT}"
        if budget < 1:
            return f"thinking.budget_tokens: {_GE1}"
    return None


def validate_params(params: object) -> str | None:
    """Return None when `params` is an acceptable Messages request, else the error message."""
    if not isinstance(params, dict):
        return f"params: {_OBJ}"

    model = params.get("model")
    if model is None:
        return f"model: {_REQUIRED}"
    if not isinstance(model, str):
        return f"model: {_STR}"
    if not model:
        return "model: String should have at least 1 character"

    max_tokens = params.get("max_tokens")
    if max_tokens is None:
        return f"max_tokens: {_REQUIRED}"
    if not _is_int(max_tokens):
        return f"max_tokens: {_INT}"
    if max_tokens < 1:
        return f"max_tokens: {_GE1}"

    messages = params.get("messages")
    if messages is None:
        return f"messages: {_REQUIRED}"
    err = _check_messages(messages)
    if err is not None:
        return err

    stream = params.get("stream")
    if stream is not None:
        if not isinstance(stream, bool):
            return f"stream: {_BOOL}"
        if stream:
            return '"stream=True" is not supported in the Message Batches API'

    system = params.get("system")
    if system is not None and not isinstance(system, str):
        if not isinstance(system, list):
            return f"system: {_STR_OR_BLOCKS}"
        err = _check_blocks(system, "system")
        if err is not None:
            return err

    for key in ("temperature", "top_p"):
        value = params.get(key)
        if value is not None and not _is_number(value):
            return f"{key}: {_NUM}"
    top_k = params.get("top_k")
    if top_k is not None and not _is_int(top_k):
        return f"top_k: {_INT}"

    stop_sequences = params.get("stop_sequences")
    if stop_sequences is not None:
        if not isinstance(stop_sequences, list):
            return f"stop_sequences: {_LIST}"
        for i, seq in enumerate(stop_sequences):
            if not isinstance(seq, str):
                return f"stop_sequences.{i}: {_STR}"

    tools = params.get("tools")
    if tools is not None:
        err = _check_tools(tools)
        if err is not None:
            return err

    tool_choice = params.get("tool_choice")
    if tool_choice is not None:
        err = _check_tool_choice(tool_choice)
        if err is not None:
            return err

    metadata = params.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        return f"metadata: {_OBJ}"

    thinking = params.get("thinking")
    if thinking is not None:
        err = _check_thinking(thinking)
        if err is not None:
            return err

    return None
