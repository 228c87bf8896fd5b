"""Checks one batch request's `params` the way the Messages API would.

Runs once per request (up to 100,000 per batch), so it is plain `isinstance` checks and
returns the first problem found as a message in the API's style, field path first
(`messages.0.role: Input should be 'user', 'assistant' or 'system'`). Keys it does not know pass
untouched: the documents use top-level `web_search`, `citations`, `code_execution` objects and
newer API fields must reach the backend. An optional key set to `null` counts as absent.

With `strict=True` (the `strict_batch_params` setting) a request is also refused wherever the
hosted API refuses it inside a batch (`_STRICT_REFUSALS`, thinking budgets below 1024, billing a
user profile), and under the batch's `anthropic-version` rules (`version`, from the create call's
header): from `2026-10-21` on, `temperature`, `top_p`, `top_k`, a `document` block in an assistant
turn and non-empty `citations` on a user text block are refused. Without it they pass: local
models want their sampling parameters.
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

_ROLES = frozenset({"user", "assistant", "system"})
_TOOL_CHOICE_TYPES = frozenset({"auto", "any", "tool", "none"})
# `between_tools` is in the SDK's ThinkingConfigParam union, so a drop-in must take it too.
_THINKING_TYPES = frozenset({"enabled", "disabled", "adaptive", "between_tools"})
_CLEAR_AT = frozenset({"next_user_message", "never"})
_EFFORTS = frozenset({"low", "medium", "high", "xhigh", "max"})


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
        # isinstance first: a dict or list role must not reach the frozenset lookup (unhashable).
        if not isinstance(role, str) or role not in _ROLES:
            return f"messages.{i}.role: Input should be 'user', 'assistant' or 'system'"
        content = message.get("content")
        if role == "system":
            err = _check_system_message(message, i)
            if err is not None:
                return err
            if content is None:
                continue
        elif content is None:
            return f"messages.{i}.content: {_REQUIRED}"
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            return f"messages.{i}.content: {_STR_OR_BLOCKS}"
        err = _check_blocks(content, f"messages.{i}.content")
        if err is not None:
            return err
    return None


def _check_system_message(message: dict[str, Any], i: int) -> str | None:
    """A mid-conversation `role: "system"` message. Its beta form adds `clear_at` and a per-message
    `output_config`, and may leave `content` out when it carries output_config fields."""
    clear_at = message.get("clear_at")
    if clear_at is not None and (not isinstance(clear_at, str) or clear_at not in _CLEAR_AT):
        return f"messages.{i}.clear_at: Input should be 'next_user_message' or 'never'"
    output_config = message.get("output_config")
    if output_config is not None and not isinstance(output_config, dict):
        return f"messages.{i}.output_config: {_OBJ}"
    if message.get("content") is None and not output_config:
        return f"messages.{i}: a system message needs content or output_config fields"
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
    if not isinstance(ctype, str) or ctype not in _TOOL_CHOICE_TYPES:
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
    if not isinstance(ttype, str) or ttype not in _THINKING_TYPES:
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


def _check_output_config(config: object) -> str | None:
    """`output_config`: `effort`, and `format` (structured outputs: a JSON schema)."""
    if not isinstance(config, dict):
        return f"output_config: {_OBJ}"
    effort = config.get("effort")
    if effort is not None and (not isinstance(effort, str) or effort not in _EFFORTS):
        return "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'"
    fmt = config.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        return f"output_config.format: {_OBJ}"
    ftype = fmt.get("type")
    if ftype is None:
        return f"output_config.format.type: {_REQUIRED}"
    if ftype != "json_schema":
        return "output_config.format.type: Input should be 'json_schema'"
    schema = fmt.get("schema")
    if schema is None:
        return f"output_config.format.schema: {_REQUIRED}"
    if not isinstance(schema, dict):
        return f"output_config.format.schema: {_OBJ}"
    return None


def validate_params(params: object, strict: bool = False, version: str | None = None) -> str | None:
    """Return None when `params` is an acceptable Messages request, else the error message.

    `strict`: refuse what the hosted API refuses inside a batch, under the rules of the batch's
    anthropic-version `version` (None: the client sent none, as curl users do).
    """
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

    output_config = params.get("output_config")
    if output_config is not None:
        err = _check_output_config(output_config)
        if err is not None:
            return err

    if strict:
        return _hosted_refusal(params, version)
    return None


# --- strict: the hosted API's refusals inside a batch -----------------------------------------

_IN_BATCHES = "is not supported in the Message Batches API"
# Top-level keys the hosted API refuses in a batch request, whatever their value (null is absent):
# fast mode, threads, and the research-preview flags. Its messages follow the API's own
# `"stream=True" is not supported in the Message Batches API`.
_STRICT_REFUSALS = {
    "speed": f"speed: fast mode {_IN_BATCHES}",
    "thread": f"thread: a thread (server-held conversation state) {_IN_BATCHES}",
    "cache_hint": f"cache_hint: this research-preview flag {_IN_BATCHES}",
    "context_hint": f"context_hint: this research-preview flag {_IN_BATCHES}",
}
_MIN_THINKING_BUDGET = 1024
# The first API version that removed the sampling parameters and tightened message content.
_VERSION_2026_10_21 = "2026-10-21"
_SAMPLING = ("temperature", "top_p", "top_k")


def _is_version_at_least(version: str | None, first: str) -> bool:
    # Versions are dates; a value that is not one (a typo, a future scheme) gets no rules.
    return (
        version is not None
        and len(version) == 10
        and version[4] == "-"
        and version[7] == "-"
        and version.replace("-", "").isdigit()
        and version >= first
    )


def _hosted_refusal(params: dict[str, Any], version: str | None) -> str | None:
    for key, message in _STRICT_REFUSALS.items():
        if params.get(key) is not None:
            return message
    thinking = params.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if budget is None:
            return f"thinking.budget_tokens: {_REQUIRED}"
        if budget < _MIN_THINKING_BUDGET:
            return f"thinking.budget_tokens: Input should be greater than or equal to {_MIN_THINKING_BUDGET}"
    billing = params.get("billing_policy")
    if isinstance(billing, dict) and billing.get("bill_to") == "user_profile":
        return f"billing_policy.bill_to: billing a user profile {_IN_BATCHES}"
    if _is_version_at_least(version, _VERSION_2026_10_21):
        return _refused_by_2026_10_21(params)
    return None


def _refused_by_2026_10_21(params: dict[str, Any]) -> str | None:
    for key in _SAMPLING:
        if key in params:  # refused even at its default value, even as null: the field is gone
            return f"{key}: Extra inputs are not permitted"
    for i, message in enumerate(params["messages"]):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        role = message["role"]
        for j, block in enumerate(content):
            btype = block["type"]
            if role == "assistant" and btype == "document":
                return (
                    f"messages.{i}.content.{j}: a document block is not allowed in an assistant message "
                    f"under anthropic-version {_VERSION_2026_10_21}; send documents in a user message"
                )
            if role == "user":
                err = _user_citations(block, f"messages.{i}.content.{j}")
                if err is not None:
                    return err
    return None


def _user_citations(block: dict[str, Any], path: str) -> str | None:
    """Non-empty `citations` on a user text block, directly or inside a search_result block."""
    btype = block["type"]
    if btype == "text":
        if block.get("citations"):
            return (
                f"{path}.citations: citations are not allowed on a text block in a user message "
                f"under anthropic-version {_VERSION_2026_10_21}"
            )
    elif btype == "search_result":
        inner = block.get("content")
        if isinstance(inner, list):
            for k, item in enumerate(inner):
                if isinstance(item, dict) and item.get("type") == "text":
                    err = _user_citations(item, f"{path}.content.{k}")
                    if err is not None:
                        return err
    return None
