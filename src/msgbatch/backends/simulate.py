"""A deterministic stand-in for a model: plausible Messages answers without any upstream.

Everything an answer contains is derived from a blake2b hash of the canonical encoding of
`params` (`msgspec.json.encode(params, order="sorted")`), so the same params always give the
same message, `id` included. The words are drawn from the hash of the params *without*
`max_tokens`, `stop_sequences`, `metadata` and `stream`: changing those cuts the same answer
at a different point instead of producing a different one (the `id` still changes).

The text answer, exactly:

    Regarding "<E>": <filler>
    Following the system prompt ("<S>"), regarding "<E>": <filler>     (when `system` has text)

where E is the first 8 whitespace-separated words of the last `user` message's text (its
string content, or its `text` blocks joined by one space) after `[[simulate ...]]` directives
are removed, joined by single spaces; S is the first 4 words of the system prompt's text (the
top-level `system`, then each `role: "system"` message in `messages` still shown to the model:
one with `clear_at: "next_user_message"` is not once a later user message exists); and the
filler is 6-48 words, stretched to a full stop, from a fixed built-in vocabulary.
When the last user message has no text the head is `Based on the tool result:` (it holds a
`tool_result` block) or `Regarding your message:`. One word counts as one output token.

With structured outputs (`output_config.format`, or the older top-level `output_format`, of type
`json_schema`) the text is instead a JSON document valid against the schema, generated from it as
tool inputs are (below), and every 4 characters of it count as one output token.

`stop_sequences` are searched in that text (after any `max_tokens` cut): the text is cut right
before the earliest-ending match, with `stop_reason` `stop_sequence`. So a stop sequence taken
from the words of E that does not occur in the head before it (e.g. `capital` for the prompt
`What is the capital of France?`) always triggers, unless `max_tokens` cuts the text first.

`thinking` of type `enabled` (with or without `budget_tokens`) or `adaptive` adds a first
`thinking` block, at most `budget_tokens` words long. `tool_choice` `{"type": "tool"}` or
`{"type": "any"}` (first custom tool), or `auto`/absent when the last user message's text
mentions a custom tool's name, answers with a `tool_use` block whose `input` is generated
from the tool's `input_schema`. Thinking, text and tool call together never exceed
`max_tokens`.

Directives in the last user message's text, `[[simulate latency=0.5 error=overloaded_error]]`,
ask for a delay (seconds) and/or a failure of one of the result error types.

The OpenAI endpoints: a chat or text completion is translated to Messages params, simulated as
above and translated back (`backends/chat_messages.py`), so it is as deterministic and honours
`max_tokens` / `max_completion_tokens`, `stop`, `tools` / `tool_choice` and `response_format`.
An embedding (`simulate_embedding`) is a unit vector of `dimensions` components (default 1536)
per input, drawn from a hash of the model and the input: the same input always has the same
vector; one token is counted per 4 characters of text (or per token of a token array).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import random
import re
import struct
from typing import Any

import msgspec

from msgbatch.backends.base import CallContext
from msgbatch.backends.chat_messages import chat_via_messages, completion_via_messages
from msgbatch.backends.retry import RetryPolicy
from msgbatch.errors import RESULT_ERROR_TYPES, InvalidRequestError, MsgbatchError, error_for_type

__all__ = ["SimulatorBackend", "parse_directives", "simulate", "simulate_embedding"]

_ECHO_WORDS = 8
_SYSTEM_WORDS = 4
_FILLER_MIN, _FILLER_SPAN = 6, 43  # 6..48 words
# Keys that do not change what the model would say, only where it stops or how it is billed.
_NON_CONTENT_KEYS = ("max_tokens", "stop_sequences", "metadata", "stream")
# Images and PDFs have no text to measure: bill them like a typical image (~1,500 tokens).
_MEDIA_CHARS = 6000
_MAX_DEPTH = 12

_encode = msgspec.json.encode
_blake2b = hashlib.blake2b

# bytes.translate maps each hash byte to a base62 character in one C call: far cheaper than
# repeated divmod, and the slight bias of `% 62` does not matter for an opaque id.
_B62 = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_B62_TABLE = bytes(_B62[i % 62] for i in range(256))

_DIRECTIVE_RE = re.compile(r"\[\[\s*simulate\b([^\]]*)\]\]")
_DIRECTIVE_KEYS = frozenset({"latency", "error"})

_NOUNS = (
    "answer", "batch", "model", "request", "result", "system", "question", "detail", "context",
    "example", "pattern", "value", "record", "message", "process", "summary", "outline", "step",
    "source", "method", "plan", "topic", "point", "reason", "option", "feature", "number", "list",
    "report", "draft", "idea", "signal", "metric", "schedule", "resource", "task", "note", "table",
)  # fmt: skip
_VERBS = (
    "explains", "supports", "shows", "covers", "describes", "follows", "includes", "suggests",
    "clarifies", "connects", "highlights", "reflects", "confirms", "improves", "simplifies",
    "outlines", "captures", "matches", "balances", "extends",
)  # fmt: skip
_ADJS = (
    "clear", "simple", "useful", "careful", "brief", "direct", "general", "specific", "common",
    "practical", "relevant", "consistent", "reliable", "short", "complete", "accurate", "main",
    "first", "final", "key",
)  # fmt: skip
_ANSWER_TEMPLATES = (
    "the {a} {n} {v} the {n}.",
    "in short, the {n} {v} a {a} {n}.",
    "each {n} {v} the {a} {n} and the {n}.",
    "a {a} {n} usually {v} the {n}.",
    "this {v} why the {n} matters.",
    "overall, the {a} {n} {v} every {n}.",
    "the {n} and the {n} are {a}.",
)
_THINKING_TEMPLATES = (
    "first, consider the {a} {n}.",
    "the {n} {v} the {n}, so check the {a} {n}.",
    "next, compare the {n} with the {n}.",
    "maybe the {a} {n} matters more.",
    "so the answer should mention the {n}.",
    "wait, the {n} {v} the {a} {n} too.",
)


def _build_pool(templates: tuple[str, ...], seed: int, sentences: int) -> tuple[list[str], list[int], list[int]]:
    """A long fixed run of filler sentences: its words, the indices where sentences start, and
    for every index the end (exclusive) of the sentence holding it, so a slice can be stretched
    to a full stop with one lookup."""
    rng = random.Random(seed)
    words: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    for _ in range(sentences):
        sentence = rng.choice(templates)
        for slot, choices in (("{a}", _ADJS), ("{n}", _NOUNS), ("{v}", _VERBS)):
            while slot in sentence:
                sentence = sentence.replace(slot, rng.choice(choices), 1)
        starts.append(len(words))
        sentence_words = sentence.split()
        sentence_words[0] = sentence_words[0].capitalize()
        words.extend(sentence_words)
        ends.extend([len(words)] * len(sentence_words))
    # A slice read from the last starts must still find enough words after it.
    limit = len(words) - 200
    return words, [s for s in starts if s <= limit], ends


_ANSWER_POOL, _ANSWER_STARTS, _ANSWER_ENDS = _build_pool(_ANSWER_TEMPLATES, 0x5EED, 1500)
_THINKING_POOL, _THINKING_STARTS, _THINKING_ENDS = _build_pool(_THINKING_TEMPLATES, 0x7B1, 800)


# --- directives -------------------------------------------------------------------------------


def _invalid(message: str) -> MsgbatchError:
    return InvalidRequestError(message)


def _last_user_text(params: dict[str, Any]) -> tuple[str, bool]:
    """The last user message's text, and whether that message carries a tool_result."""
    messages = params.get("messages")
    if not isinstance(messages, list):
        return "", False
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content, False
            if not isinstance(content, list):
                return "", False
            texts: list[str] = []
            has_result = False
            for block in content:
                if isinstance(block, dict):
                    btype = block.get("type")
                    if btype == "text":
                        text = block.get("text")
                        if isinstance(text, str):
                            texts.append(text)
                    elif btype == "tool_result":
                        has_result = True
            return " ".join(texts), has_result
    return "", False


def _split_directives(text: str) -> tuple[str, dict[str, str]]:
    """Remove `[[simulate k=v ...]]` from `text`; return the rest and the merged pairs."""
    if "[[" not in text:
        return text, {}
    matches = list(_DIRECTIVE_RE.finditer(text))
    if not matches:
        return text, {}
    pairs: dict[str, str] = {}
    for match in matches:
        for item in match.group(1).split():
            key, sep, value = item.partition("=")
            if not sep or not key or not value:
                raise _invalid(f"malformed simulate directive: {item!r} (expected key=value)")
            if key not in _DIRECTIVE_KEYS:
                raise _invalid(f"unknown simulate directive: {key}")
            pairs[key] = value
    return _DIRECTIVE_RE.sub(" ", text), pairs


def parse_directives(params: dict[str, Any]) -> dict[str, str]:
    """The `key=value` pairs of every `[[simulate ...]]` directive in the last user message.

    Raises `InvalidRequestError` for a malformed pair or unknown key.
    """
    return _split_directives(_last_user_text(params)[0])[1]


def _interpret(pairs: dict[str, str]) -> tuple[float | None, str | None]:
    latency: float | None = None
    raw = pairs.get("latency")
    if raw is not None:
        try:
            latency = float(raw)
        except ValueError:
            raise _invalid(f"invalid simulate latency: {raw}") from None
        if not math.isfinite(latency) or latency < 0:
            raise _invalid(f"invalid simulate latency: {raw}")
    error = pairs.get("error")
    if error is not None and error not in RESULT_ERROR_TYPES:
        raise _invalid(f"unknown simulate error type: {error}")
    return latency, error


def _simulated_error(error_type: str) -> MsgbatchError:
    return error_for_type(error_type, f"Simulated {error_type}", retryable=False)


# --- prompt measurement -----------------------------------------------------------------------


def _text_of(content: object) -> str:
    """The text of a system prompt: a string, or its text blocks joined by one space."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str))
    return ""


def _system_text(params: dict[str, Any], top_level: str) -> str:
    """The system prompt the model sees: the top-level one, then the mid-conversation system
    messages still shown (`clear_at: "next_user_message"` hides one once a later user turn exists)."""
    messages = params.get("messages")
    if not isinstance(messages, list):
        return top_level
    parts = [top_level] if top_level else []
    user_seen = False
    for message in reversed(messages):
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "user":
            user_seen = True
        elif role == "system" and not (user_seen and message.get("clear_at") == "next_user_message"):
            text = _text_of(message.get("content"))
            if text:
                parts.insert(1 if top_level else 0, text)
    return " ".join(parts)


def _output_schema(params: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema of a structured-outputs request (`output_config.format`, else the older
    top-level `output_format`), or None."""
    config = params.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    if fmt is None:
        fmt = params.get("output_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = fmt.get("schema")
        if isinstance(schema, dict):
            return schema
    return None


def _block_chars(block: object) -> int:
    if not isinstance(block, dict):
        return 0
    btype = block.get("type")
    if btype == "text":
        text = block.get("text")
        return len(text) if isinstance(text, str) else 0
    if btype == "tool_result":
        inner = block.get("content")
        if isinstance(inner, str):
            return len(inner) + 16
        if isinstance(inner, list):
            return sum(_block_chars(b) for b in inner) + 16
        return 16
    if btype == "tool_use":
        return len(_canonical(block.get("input"))) + 16
    if btype in ("thinking", "redacted_thinking"):
        return len(str(block.get("thinking") or block.get("data") or ""))
    if btype == "document":
        source = block.get("source")
        if isinstance(source, dict) and source.get("type") == "text":
            return len(str(source.get("data") or ""))
        return _MEDIA_CHARS
    if btype == "image":
        return _MEDIA_CHARS
    return 64


def _prompt_chars(params: dict[str, Any], system_text: str) -> int:
    chars = len(system_text)
    messages = params.get("messages")
    if isinstance(messages, list):
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                for block in content:
                    chars += _block_chars(block)
    tools = params.get("tools")
    if tools:
        chars += len(_canonical(tools))
    return chars


def _canonical(value: object) -> bytes:
    try:
        return _encode(value, order="sorted")
    except (TypeError, OverflowError, msgspec.EncodeError):
        # Not reachable with JSON-decoded params; a stable fallback beats crashing the worker.
        return json.dumps(value, sort_keys=True, default=repr).encode()


# --- tool input from a JSON Schema ------------------------------------------------------------


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref == "#":
        return root
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    node: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(node, dict) or part not in node:
            return {}
        node = node[part]
    return node if isinstance(node, dict) else {}


def _string_for(schema: dict[str, Any], rng: random.Random) -> str:
    fmt = schema.get("format")
    if fmt == "date":
        value = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    elif fmt == "date-time":
        value = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:00:00Z"
    elif fmt == "email":
        value = f"{rng.choice(_NOUNS)}@example.com"
    elif fmt in ("uri", "url"):
        value = f"https://example.com/{rng.choice(_NOUNS)}"
    elif fmt == "uuid":
        value = "%08x-%04x-4%03x-8%03x-%012x" % (  # noqa: UP031 - fixed-width hex fields
            rng.getrandbits(32),
            rng.getrandbits(16),
            rng.getrandbits(12),
            rng.getrandbits(12),
            rng.getrandbits(48),
        )
    else:
        value = f"{rng.choice(_ADJS)} {rng.choice(_NOUNS)}"
    min_len = schema.get("minLength")
    if isinstance(min_len, int) and len(value) < min_len:
        value = value + "x" * (min_len - len(value))
    max_len = schema.get("maxLength")
    if isinstance(max_len, int) and len(value) > max_len:
        value = value[: max(max_len, 0)]
    return value


def _number_for(schema: dict[str, Any], rng: random.Random, integer: bool) -> int | float:
    lo = schema.get("minimum")
    hi = schema.get("maximum")
    xlo = schema.get("exclusiveMinimum")
    xhi = schema.get("exclusiveMaximum")
    # Draft 4 spells exclusivity as booleans beside minimum/maximum.
    if xlo is True and isinstance(lo, (int, float)):
        xlo, lo = lo, None
    if xhi is True and isinstance(hi, (int, float)):
        xhi, hi = hi, None
    low: float = lo if isinstance(lo, (int, float)) and not isinstance(lo, bool) else -math.inf
    high: float = hi if isinstance(hi, (int, float)) and not isinstance(hi, bool) else math.inf
    if isinstance(xlo, (int, float)) and not isinstance(xlo, bool):
        low = max(low, math.floor(xlo) + 1 if integer else xlo + 1e-6)
    if isinstance(xhi, (int, float)) and not isinstance(xhi, bool):
        high = min(high, math.ceil(xhi) - 1 if integer else xhi - 1e-6)
    if math.isinf(low) and math.isinf(high):
        low, high = 0, 100
    elif math.isinf(low):
        low = high - 100
    elif math.isinf(high):
        high = low + 100
    if integer:
        ilow, ihigh = math.ceil(low), math.floor(high)
        step = schema.get("multipleOf")
        if isinstance(step, int) and not isinstance(step, bool) and step > 0:
            first = -(-ilow // step) * step
            count = (ihigh - first) // step + 1
            return first + step * rng.randrange(count) if count > 0 else first
        return rng.randint(ilow, ihigh) if ilow <= ihigh else ilow
    if high < low:
        return float(low)
    return round(low + (high - low) * rng.random(), 3) if high - low > 0.01 else float(low)


def _value_for(schema: object, root: dict[str, Any], rng: random.Random, depth: int) -> Any:
    if not isinstance(schema, dict):
        return rng.choice(_NOUNS)
    if depth > _MAX_DEPTH:
        # Only a schema that requires itself gets here; it has no finite instance anyway.
        return None
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if "default" in schema:
        return schema["default"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[rng.randrange(len(enum))]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            # The first option that is not plain null keeps optional fields informative.
            chosen = next((o for o in options if not (isinstance(o, dict) and o.get("type") == "null")), None)
            return _value_for(chosen if chosen is not None else options[0], root, rng, depth)
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and all_of:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in all_of:
            if isinstance(part, dict):
                part = _resolve(part, root)
                for k, v in part.items():
                    if k in ("properties", "required") and k in merged:
                        merged[k] = (
                            {**merged[k], **v} if k == "properties" else [*merged[k], *v]
                        )  # fmt: skip
                    else:
                        merged.setdefault(k, v)
        return _value_for(merged, root, rng, depth)

    stype = schema.get("type")
    if isinstance(stype, list):
        stype = next((t for t in stype if t != "null"), "null")
    if stype is None:
        if "properties" in schema:
            stype = "object"
        elif "items" in schema:
            stype = "array"
        else:
            stype = "string"

    if stype == "object":
        out: dict[str, Any] = {}
        props = schema.get("properties")
        required = schema.get("required")
        required_set = set(required) if isinstance(required, list) else set()
        if isinstance(props, dict):
            for name, sub in props.items():
                # Past a few levels only required fields: recursive schemas must end somewhere.
                if depth < 4 or name in required_set:
                    out[name] = _value_for(sub, root, rng, depth + 1)
        return out
    if stype == "array":
        min_items = schema.get("minItems")
        max_items = schema.get("maxItems")
        count = min_items if isinstance(min_items, int) and min_items > 0 else (1 if depth < 4 else 0)
        if isinstance(max_items, int):
            count = min(count, max(max_items, 0))
        items = schema.get("items")
        return [_value_for(items, root, rng, depth + 1) for _ in range(count)]
    if stype == "string":
        return _string_for(schema, rng)
    if stype == "integer":
        return _number_for(schema, rng, integer=True)
    if stype == "number":
        return _number_for(schema, rng, integer=False)
    if stype == "boolean":
        return rng.random() < 0.5
    if stype == "null":
        return None
    return rng.choice(_NOUNS)


def _tool_input(tool: dict[str, Any], seed: bytes) -> dict[str, Any]:
    schema = tool.get("input_schema")
    if not isinstance(schema, dict):
        return {}
    value = _value_for(schema, schema, random.Random(seed), 0)
    # The API's tool_use.input is always an object, whatever the schema's top level says.
    return value if isinstance(value, dict) else {}


def _is_custom(tool: object) -> bool:
    return isinstance(tool, dict) and tool.get("type") in (None, "custom") and isinstance(tool.get("name"), str)


def _pick_tool(params: dict[str, Any], user_text: str, has_result: bool) -> tuple[dict[str, Any] | None, bool]:
    """The custom tool the answer calls (or None), and whether tool_choice forced it."""
    tools = params.get("tools")
    if not isinstance(tools, list) or not tools:
        tools = []
    choice = params.get("tool_choice")
    if not isinstance(choice, dict):
        choice = {}
    ctype = choice.get("type")
    if ctype == "tool":
        name = choice.get("name")
        for tool in tools:
            if isinstance(tool, dict) and tool.get("name") == name:
                # A server tool runs upstream; the simulator can only answer it in text.
                return (tool, True) if _is_custom(tool) else (None, False)
        raise _invalid(f"tool_choice.name: Tool '{name}' not found in tools")
    if ctype == "any":
        for tool in tools:
            if _is_custom(tool):
                return tool, True
        return None, False
    if ctype in (None, "auto") and user_text and not has_result:
        for tool in tools:
            if _is_custom(tool) and tool["name"] in user_text:
                return tool, False
    return None, False


# --- the answer ---------------------------------------------------------------------------------


def _head(echo: str, system_text: str, has_result: bool) -> str:
    if echo:
        head = f'regarding "{echo}":'
    elif has_result:
        head = "based on the tool result:"
    else:
        head = "regarding your message:"
    if system_text:
        sys_echo = " ".join(system_text.split(maxsplit=_SYSTEM_WORDS)[:_SYSTEM_WORDS])
        if sys_echo:
            return f'Following the system prompt ("{sys_echo}"), {head}'
        return f"Following the system prompt, {head}"
    return head[0].upper() + head[1:]


def _generate(params: dict[str, Any], user_text: str, has_result: bool) -> dict[str, Any]:
    content_part = params.copy()
    rest_part = {}
    for key in _NON_CONTENT_KEYS:
        if key in content_part:
            rest_part[key] = content_part.pop(key)
    hasher = _blake2b(_canonical(content_part), digest_size=64)
    seed = hasher.digest()
    hasher.update(_canonical(rest_part))
    ids = hasher.digest()

    max_tokens = params.get("max_tokens")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        max_tokens = 1
    system = params.get("system")
    top_system = _text_of(system) if system else ""
    system_text = _system_text(params, top_system)
    schema = _output_schema(params) if "output_config" in params or "output_format" in params else None
    if "tools" in params or "tool_choice" in params:
        tool, forced = _pick_tool(params, user_text, has_result)
    else:
        tool, forced = None, False
    echo = " ".join(user_text.split(maxsplit=_ECHO_WORDS)[:_ECHO_WORDS])

    n = int.from_bytes(seed[:16], "little")
    filler_len = _FILLER_MIN + n % _FILLER_SPAN
    n //= _FILLER_SPAN
    start = _ANSWER_STARTS[n % len(_ANSWER_STARTS)]
    n //= len(_ANSWER_STARTS)

    content: list[dict[str, Any]] = []
    used = 0
    stop_reason = "end_turn"
    stop_sequence: str | None = None

    thinking = params.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
        natural = (16 + n % 81) if thinking["type"] == "enabled" else (8 + n % 41)
        n //= 81
        tstart = _THINKING_STARTS[n % len(_THINKING_STARTS)]
        twords = f'The user asks about "{echo}".'.split() if echo else ["The", "user", "asks", "something."]
        body = natural - len(twords)
        if body > 0:
            twords += _THINKING_POOL[tstart : _THINKING_ENDS[tstart + body - 1]]
        budget = thinking.get("budget_tokens")
        if isinstance(budget, int) and budget >= 1:
            twords = twords[:budget]
        if len(twords) >= max_tokens:
            twords = twords[:max_tokens]
            stop_reason = "max_tokens"
        used = len(twords)
        shown = "" if thinking.get("display") == "omitted" else " ".join(twords)
        # Opaque like the real one, and bound to this exact request through the params hash.
        signature = base64.b64encode(ids[16:64]).decode()
        content.append({"type": "thinking", "thinking": shown, "signature": signature})

    if stop_reason == "end_turn":
        # The answer as units of one output token each: words joined by spaces, or for structured
        # outputs the JSON document in runs of 4 characters joined by nothing.
        sep = " "
        if tool is None and schema is not None:
            document = json.dumps(_value_for(schema, schema, random.Random(seed[16:48]), 0), ensure_ascii=False)
            words = [document[i : i + 4] for i in range(0, len(document), 4)]
            sep = ""
        elif tool is None:
            words = _head(echo, system_text, has_result).split()
            words += _ANSWER_POOL[start : _ANSWER_ENDS[start + filler_len - 1]]
        elif forced or schema is not None:
            # A forced tool call comes without preamble, as from the real API; so does one whose
            # text would have to be JSON.
            words = []
        else:
            words = f"I'll use the {tool['name']} tool for this.".split()

        limit = max_tokens - used
        cut = len(words) > limit
        if cut:
            words = words[:limit]
        text = sep.join(words)
        hit: tuple[int, int, str] | None = None  # (start, end, sequence)
        stop_sequences = params.get("stop_sequences")
        if stop_sequences and text:
            for seq in stop_sequences:
                if isinstance(seq, str) and seq:
                    idx = text.find(seq)
                    if idx >= 0 and (hit is None or idx + len(seq) < hit[1]):
                        hit = (idx, idx + len(seq), seq)
        if hit is not None:
            text = text[: hit[0]]
            # The stop sequence itself was generated, and billed, but is not returned.
            spent = len(text.split()) if sep else -(-len(text) // 4)
            used = min(max_tokens, used + spent + 1)
            stop_reason, stop_sequence = "stop_sequence", hit[2]
        elif cut:
            used = max_tokens
            stop_reason = "max_tokens"
        else:
            used += len(words)
        if text:
            content.append({"type": "text", "text": text})

        if tool is not None and stop_reason == "end_turn":
            tool_input = _tool_input(tool, seed[16:48])
            cost = len(_canonical(tool_input)) // 4 + 8
            if used + cost > max_tokens:
                used = max_tokens
                stop_reason = "max_tokens"
            else:
                used += cost
                stop_reason = "tool_use"
                content.append(
                    {
                        "type": "tool_use",
                        "id": "toolu_" + ids[24:48].translate(_B62_TABLE).decode(),
                        "name": tool["name"],
                        "input": tool_input,
                    }
                )

    return {
        "id": "msg_" + ids[:24].translate(_B62_TABLE).decode(),
        "type": "message",
        "role": "assistant",
        "model": params.get("model"),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": max(1, (_prompt_chars(params, top_system) + 3) // 4),
            # The API bills at least one output token even for an empty answer.
            "output_tokens": max(1, used),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "service_tier": "batch",
        },
    }


def simulate(params: dict[str, Any]) -> tuple[dict[str, Any], float | None]:
    """The simulated Message for `params`, and the latency a directive asked for (or None).

    Pure and deterministic. Raises a `MsgbatchError` when a directive asks for an error, a
    directive is malformed, or `tool_choice` names a tool that `tools` lacks.
    """
    text, has_result = _last_user_text(params)
    text, pairs = _split_directives(text)
    latency, error = _interpret(pairs) if pairs else (None, None)
    if error is not None:
        raise _simulated_error(error)
    return _generate(params, text, has_result), latency


EMBEDDING_DIMENSIONS = 1536
_MAX_DIMENSIONS = 8192


def _embedding_inputs(value: object) -> list[str | list[int]]:
    """The inputs of an embeddings request: a string, a token array, or a list of either."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [value]
        if all(isinstance(v, str) for v in value):
            return list(value)
        if all(isinstance(v, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in v) for v in value):
            return list(value)
    raise _invalid("input: Input should be a string, a list of strings, or a list of token arrays")


def _unit_vector(seed: bytes, dimensions: int) -> list[float]:
    values = struct.unpack(f"<{dimensions}h", hashlib.shake_256(seed).digest(2 * dimensions))
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def simulate_embedding(body: dict[str, Any]) -> dict[str, Any]:
    """The simulated answer of a `/v1/embeddings` request: deterministic unit vectors."""
    model = body.get("model")
    inputs = _embedding_inputs(body.get("input"))
    dimensions = body.get("dimensions", EMBEDDING_DIMENSIONS)
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 1 <= dimensions <= _MAX_DIMENSIONS:
        raise _invalid(f"dimensions: must be an integer between 1 and {_MAX_DIMENSIONS}")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise _invalid("encoding_format: Input should be 'float' or 'base64'")
    data = []
    tokens = 0
    for index, item in enumerate(inputs):
        vector = _unit_vector(_canonical([model, item]), dimensions)
        embedding: list[float] | str = vector
        if encoding == "base64":
            embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens += max(1, (len(item) + 3) // 4) if isinstance(item, str) else len(item)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


class SimulatorBackend:
    """A backend that answers every request with `simulate`, after an optional delay."""

    name = "simulate"
    # A simulated error is final: the directive asks for that result, not for a retry.
    retry = RetryPolicy(max_attempts=1)
    max_concurrency: int | None = None
    concurrency_limit: int | None = None

    def __init__(self, default_latency: float = 0.0, *, name: str = "simulate") -> None:
        self.name = name
        self.default_latency = default_latency

    async def create_message(self, params: dict[str, Any], context: CallContext) -> dict[str, Any]:
        text, has_result = _last_user_text(params)
        text, pairs = _split_directives(text)
        latency, error = _interpret(pairs) if pairs else (None, None)
        delay = latency if latency is not None else self.default_latency
        if delay > 0:
            await asyncio.sleep(delay)
        if error is not None:
            raise _simulated_error(error)
        return _generate(params, text, has_result)

    async def create_chat_completion(self, body: dict[str, Any], context: CallContext) -> dict[str, Any]:
        return await chat_via_messages(self.create_message, body, context)

    async def create_completion(self, body: dict[str, Any], context: CallContext) -> dict[str, Any]:
        return await completion_via_messages(self.create_message, body, context)

    async def create_embedding(self, body: dict[str, Any], context: CallContext) -> dict[str, Any]:
        if self.default_latency > 0:
            await asyncio.sleep(self.default_latency)
        return simulate_embedding(body)

    async def aclose(self) -> None:
        return None
