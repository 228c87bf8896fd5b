"""An upstream that goes away mid-batch (a model server restarting): nothing fails for good.

The outage lasts `MSGBATCH_TEST_OUTAGE_SECONDS` (default 3 s; the issue's 3 minutes with
`MSGBATCH_TEST_OUTAGE_SECONDS=180`), far longer than the backend's whole retry budget (3 attempts,
20-40 ms apart): without the outage guard most requests would end `errored`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import pytest

from conftest import async_client_for, make_settings, running_server, wait_until
from fake_upstream import FakeUpstream
from msgbatch.backends.config import build_router

OUTAGE = float(os.environ.get("MSGBATCH_TEST_OUTAGE_SECONDS", "3"))


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
async def test_a_batch_rides_out_an_upstream_restart(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="msgbatch.backends")
    with FakeUpstream(latency=0.05) as fake:
        url = fake.url if kind == "anthropic" else fake.url + "/v1"
        settings = make_settings(
            tmp_path,
            backends=[
                {
                    "name": "gpu",
                    "type": kind,
                    "url": url,
                    "concurrency": 8,
                    "max_attempts": 3,
                    "backoff": "20ms",
                    "backoff_cap": "40ms",
                    "timeout": "5s",
                }
            ],
        )
        async with running_server(settings, router=build_router(settings)) as srv:
            client = async_client_for(srv)
            requests = [
                {
                    "custom_id": f"r{i}",
                    "params": {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": f"q{i}"}]},
                }
                for i in range(200)
            ]
            batch = await client.messages.batches.create(requests=requests)  # type: ignore[arg-type]

            async def some_done() -> bool:
                got = await client.messages.batches.retrieve(batch.id)
                return got.request_counts.succeeded >= 20

            await wait_until(some_done, what="the batch under way")
            fake.pause()
            await asyncio.sleep(OUTAGE)
            before = await client.messages.batches.retrieve(batch.id)
            assert before.request_counts.errored == 0 and before.processing_status == "in_progress"
            fake.resume()
            back = time.monotonic()

            async def ended() -> bool:
                return (await client.messages.batches.retrieve(batch.id)).processing_status == "ended"

            await wait_until(ended, timeout=30, what="the batch's end after the upstream came back")
            took = time.monotonic() - back
            final = await client.messages.batches.retrieve(batch.id)
            await client.close()
    assert final.request_counts.succeeded == 200, final.request_counts
    # The rest of the batch needs about (remaining / 8) * 0.05 s; probes come at most 2 s apart.
    assert took < 2 + before.request_counts.processing * 0.05 / 8 + 2
    down = [r for r in caplog.records if "backend.down" in r.message]
    up = [r for r in caplog.records if "backend.up" in r.message]
    assert len(down) == 1 and down[0].levelno == logging.WARNING
    assert len(up) == 1 and up[0].levelno == logging.INFO
