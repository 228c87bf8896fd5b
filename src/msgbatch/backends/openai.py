"""The `openai` backend: any server that speaks `POST /v1/chat/completions` (vLLM, SGLang, TGI,
the llama.cpp server, Ollama, LiteLLM, ...), with the request and the answer translated
(`backends/translate.py`)."""

from __future__ import annotations

from typing import Any

import msgspec

from msgbatch.backends.base import CallContext
from msgbatch.backends.http import HttpBackend, normalize_base_url
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
