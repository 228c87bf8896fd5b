"""Against a real inference server (opt-in): a batch of a few hundred requests through the
`anthropic` backend (its `POST /v1/messages`) and the `openai` backend (its
`POST /v1/chat/completions`), through the official SDK and a real `msgbatch serve`.

Skipped unless `MSGBATCH_TEST_UPSTREAM_URL` names the server's root, e.g.

    MSGBATCH_TEST_UPSTREAM_URL=http://127.0.0.1:8011 pytest tests/acceptance/test_real_upstream.py -s

(`MSGBATCH_TEST_UPSTREAM_MODEL`: the served model name, default `tiny-llama`;
`MSGBATCH_TEST_UPSTREAM_REQUESTS`: requests per batch, default 300;
`MSGBATCH_TEST_UPSTREAM_CONCURRENCY`: default 32). The README's "Backends" section shows how
to run vLLM's CPU build on a tiny random-weight model made by `bench/make_tiny_model.py`. It
prints the throughput of each run, the figures the README records.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic.types.messages import MessageBatchIndividualResponse

URL = os.environ.get("MSGBATCH_TEST_UPSTREAM_URL", "")
MODEL = os.environ.get("MSGBATCH_TEST_UPSTREAM_MODEL", "tiny-llama")
REQUESTS = int(os.environ.get("MSGBATCH_TEST_UPSTREAM_REQUESTS", "300"))
CONCURRENCY = int(os.environ.get("MSGBATCH_TEST_UPSTREAM_CONCURRENCY", "32"))

pytestmark = pytest.mark.skipif(not URL, reason="MSGBATCH_TEST_UPSTREAM_URL is not set")


def requests(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        params: dict[str, Any] = {
            "model": MODEL,
            "max_tokens": 8 + i % 9,
            "messages": [{"role": "user", "content": f"Hello number {i}, what is the capital of France?"}],
        }
        if i % 3 == 0:
            params["system"] = "Be brief."
        if i % 5 == 0:
            params["temperature"] = 0.0
        if i % 7 == 0:
            params["stop_sequences"] = ["the"]
        out.append({"custom_id": f"r{i}", "params": params})
    return out


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_a_batch_on_a_real_server(serve_process: Any, tmp_path: Path, kind: str) -> None:
    upstream = URL.rstrip("/") + ("/v1" if kind == "openai" else "")
    proc = serve_process("--upstream", f"{kind}={upstream}", "--concurrency", str(CONCURRENCY))
    client = anthropic.Anthropic(api_key="k", base_url=proc.base_url, max_retries=0, _strict_response_validation=True)
    start = time.perf_counter()
    batch = client.messages.batches.create(requests=requests(REQUESTS))  # type: ignore[arg-type]
    deadline = time.monotonic() + 600
    while batch.processing_status != "ended":
        assert time.monotonic() < deadline, batch
        time.sleep(0.1)
        batch = client.messages.batches.retrieve(batch.id)
    elapsed = time.perf_counter() - start
    results = list(client.messages.batches.results(batch.id))
    client.close()

    assert batch.request_counts.succeeded == REQUESTS, batch.request_counts
    assert sorted(r.custom_id for r in results) == sorted(f"r{i}" for i in range(REQUESTS))
    output_tokens = 0
    for line in results:
        MessageBatchIndividualResponse.model_validate(line.model_dump(mode="json", exclude_unset=True), strict=True)
        assert line.result.type == "succeeded"
        message = line.result.message
        assert message.usage.service_tier == "batch" and message.usage.input_tokens > 0
        assert message.stop_reason in ("end_turn", "max_tokens", "stop_sequence")
        output_tokens += message.usage.output_tokens
    print(
        f"\n{kind}: {REQUESTS} requests at concurrency {CONCURRENCY} in {elapsed:.2f} s = "
        f"{REQUESTS / elapsed:.1f} requests/s, {output_tokens / elapsed:.0f} output tokens/s"
    )
