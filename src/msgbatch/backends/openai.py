"""The `openai` backend: any server that speaks `POST /v1/chat/completions` (vLLM, SGLang, TGI,
the llama.cpp server, Ollama, LiteLLM, ...).

A Messages request is translated both ways (`backends/translate.py`). The OpenAI Batch API's
requests run natively: the body goes to `/chat/completions`, `/completions` or `/embeddings` as
the client wrote it, unknown keys included, only `model` rewritten when the backend sets one,
and the upstream's answer is the result as it came (it must at least have `choices`, or `data`
for embeddings: anything else is a malformed answer, retried)."""

from __future__ import annotations

from typing import Any

import msgspec

from msgbatch.backends.base import CallContext
from msgbatch.backends.http import HttpBackend, malformed, normalize_base_url
from msgbatch.backends.translate import Untranslatable, from_chat_completion, to_chat_completion
from msgbatch.errors import InvalidRequestError

__all__ = ["OpenAIBackend"]

_encode = msgspec.json.encode


class OpenAIBackend(HttpBackend):
    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        api_key: str = "",
        model: str | None = None,
        timeout: float = 600.0,
        concurrency: int = 64,
        headers: dict[str, str] | None = None,
        client: str = "builtin",
    ) -> None:
        # OpenAI-style base URLs end in /v1 (`http://host:8000/v1`); a bare host gets it added.
        base = normalize_base_url(base_url, default_path="/v1")
        fixed = {"content-type": "application/json", **(headers or {})}
        if api_key:
            fixed["authorization"] = f"Bearer {api_key}"
        super().__init__(
            name, base, api_key=api_key, timeout=timeout, concurrency=concurrency, headers=fixed, client=client
        )
        self.path = "/chat/completions"
        self.model = model

    async def create_message(self, params: dict[str, Any], context: CallContext) -> dict[str, Any]:
        try:
            body = to_chat_completion(params, self.model)
        except Untranslatable as exc:
            raise InvalidRequestError(str(exc)) from None
        answer = await self.post_json(self.path, _encode(body), {})
        return from_chat_completion(answer, params, self.name)

    async def _native(self, path: str, body: dict[str, Any], key: str) -> dict[str, Any]:
        if self.model:
            body = {**body, "model": self.model}
        answer = await self.post_json(path, _encode(body), {})
        if not isinstance(answer.get(key), list):
            raise malformed(self.name, f"no {key}")
        return answer

    async def create_chat_completion(self, body: dict[str, Any], context: CallContext) -> dict[str, Any]:
        return await self._native("/chat/completions", body, "choices")

    async def create_completion(self, body: dict[str, Any], context: CallContext) -> dict[str, Any]:
        return await self._native("/completions", body, "choices")

    async def create_embedding(self, body: dict[str, Any], context: CallContext) -> dict[str, Any]:
        return await self._native("/embeddings", body, "data")
