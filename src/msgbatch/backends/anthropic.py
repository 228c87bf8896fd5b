"""The `anthropic` backend: any server that speaks `POST /v1/messages` (vLLM >= 0.11.1, the
llama.cpp server, Ollama >= 0.14, LiteLLM, the hosted API).

The request's params go upstream as they were received, unknown keys included (mid-conversation
system messages too), with the batch's `anthropic-version` (unless the backend configuration pins
one; 2023-06-01 when the client sent none), its `anthropic-beta` values, its other forwarded
headers (`anthropic-user-profile-id`) and the configured key. The upstream's Message is the
result, made to parse as the SDK's `Message` (`BetaMessage` for a batch with betas):
`usage.service_tier` is `batch`, missing token counts are 0, and the few fields compatible servers
leave out are filled in. Its `stop_reason` is kept when the SDK knows it; llama.cpp's `end_turn`
with a `stop_sequence` (a pair the hosted API never sends) becomes `stop_sequence`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from msgbatch.backends.base import CallContext
from msgbatch.backends.chat_messages import chat_via_messages, completion_via_messages, no_embeddings
from msgbatch.backends.http import HttpBackend, malformed, normalize_base_url
from msgbatch.ids import new_message_id

__all__ = ["AnthropicBackend", "normalize_message"]

# The SDK's StopReason, and BetaStopReason (a superset): the values a results line may carry in a
# batch without betas, and in one with (read with the beta models). tests/test_sdk214.py checks
# them against the installed SDK.
STOP_REASONS = frozenset(
    {"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal", "model_context_window_exceeded"}
)
BETA_STOP_REASONS = STOP_REASONS | {"compaction"}
DEFAULT_VERSION = "2023-06-01"
# What OpenAI-flavoured servers put in stop_reason when they get it wrong.
_STOP_REASON_ALIASES = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "eos": "end_turn"}
_TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")

_encode = msgspec.json.encode


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def normalize_message(answer: dict[str, Any], model: object, backend: str, *, beta: bool = False) -> dict[str, Any]:
    """Make an upstream's Message one the SDK parses strictly (as a BetaMessage when `beta`); a body
    that is not a Message at all raises a retryable InternalServerError (a proxy's error page, a
    truncated answer)."""
    if answer.get("type", "message") != "message" or not isinstance(answer.get("content"), list):
        raise malformed(backend, "not a Message")
    for block in answer["content"]:
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise malformed(backend, "a content block without a type")
    answer["type"] = "message"
    answer["role"] = "assistant"
    if not isinstance(answer.get("id"), str) or not answer["id"]:
        answer["id"] = new_message_id()
    if not isinstance(answer.get("model"), str):
        answer["model"] = model if isinstance(model, str) else ""
    stop_reason = answer.get("stop_reason")
    stop_sequence = answer.get("stop_sequence")
    if stop_reason is not None and stop_reason not in (BETA_STOP_REASONS if beta else STOP_REASONS):
        stop_reason = answer["stop_reason"] = _STOP_REASON_ALIASES.get(str(stop_reason), "end_turn")
    if stop_reason == "end_turn" and isinstance(stop_sequence, str) and stop_sequence:
        # llama.cpp reports a matched stop sequence this way.
        answer["stop_reason"] = "stop_sequence"
    elif stop_reason != "stop_sequence" or not isinstance(stop_sequence, str):
        answer["stop_sequence"] = None
    usage = answer.get("usage")
    if not isinstance(usage, dict):
        usage = answer["usage"] = {}
    for key in _TOKEN_FIELDS:
        value = usage.get(key)
        if not _is_int(value):
            usage[key] = int(value) if isinstance(value, float) and value == value else 0
    usage["service_tier"] = "batch"
    return answer


class AnthropicBackend(HttpBackend):
    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        api_key: str = "",
        auth: str = "x-api-key",
        anthropic_version: str | None = None,
        model: str | None = None,
        timeout: float = 600.0,
        concurrency: int = 64,
        headers: dict[str, str] | None = None,
        client: str = "builtin",
    ) -> None:
        # The configured URL is the server's root; `.../v1` is accepted too.
        root = normalize_base_url(base_url)
        if root.endswith("/v1"):
            root = root[:-3]
        fixed = {"content-type": "application/json", **(headers or {})}
        # Sent with each call (the batch's own, unless pinned here or in `headers`), never twice.
        for name in [n for n in fixed if n.lower() == "anthropic-version"]:
            anthropic_version = anthropic_version or fixed[name]
            del fixed[name]
        self.pinned_version = anthropic_version
        if api_key:
            if auth == "bearer":
                fixed["authorization"] = f"Bearer {api_key}"
            else:
                fixed["x-api-key"] = api_key
        super().__init__(
            name,
            root,
            api_key=api_key,
            timeout=timeout,
            concurrency=concurrency,
            headers=fixed,
            client=client,
        )
        self.path = "/v1/messages"
        self.model = model

    async def create_message(self, params: dict[str, Any], context: CallContext) -> dict[str, Any]:
        if self.model:
            params = {**params, "model": self.model}
        headers = {
            **context.extra_headers,
            "anthropic-version": self.pinned_version or context.anthropic_version or DEFAULT_VERSION,
        }
        if context.betas:
            headers["anthropic-beta"] = ",".join(context.betas)
        answer = await self.post_json(self.path, _encode(params), headers)
        return normalize_message(answer, params.get("model"), self.name, beta=bool(context.betas))

    # The OpenAI endpoints: translated to a Messages call (backends/chat_messages.py).

    async def create_chat_completion(self, body: dict[str, Any], context: CallContext) -> dict[str, Any]:
        return await chat_via_messages(self.create_message, body, context)

    async def create_completion(self, body: dict[str, Any], context: CallContext) -> dict[str, Any]:
        return await completion_via_messages(self.create_message, body, context)

    async def create_embedding(self, body: dict[str, Any], context: CallContext) -> dict[str, Any]:
        raise no_embeddings(self.name, "anthropic")
