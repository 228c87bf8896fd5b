"""Hard cancel against a real HTTP upstream (tests/fake_upstream.py, which notices a client that
closes its connection mid-generation, as vLLM and llama.cpp do): with `abort_running` the calls
running upstream are cut, they end `canceled`, and the upstream gets no new request of the batch.
Without it, cancel keeps the hosted behaviour: the running requests finish.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import async_client_for, make_settings, running_server, simple_request, wait_ended, wait_until
from fake_upstream import FakeUpstream


def settings_for(tmp_path: Path, fake: FakeUpstream, client: str, **overrides: object) -> object:
    backend = {"name": "gpu", "type": "anthropic", "url": fake.url, "concurrency": 2, "client": client}
    return make_settings(tmp_path, backends=[backend], **overrides)


@pytest.mark.parametrize("client", ["builtin", "httpx"])
async def test_hard_cancel_cuts_the_running_upstream_calls(tmp_path: Path, client: str) -> None:
    with FakeUpstream(latency=60, watch_disconnects=True) as fake:
        async with running_server(settings_for(tmp_path, fake, client)) as srv, async_client_for(srv) as sdk:
            batch = await sdk.messages.batches.create(requests=[simple_request(f"r{i}", f"q{i}") for i in range(10)])
            await wait_until(lambda: fake.in_flight == 2, what="two requests running upstream")
            received = len(fake.calls)
            canceling = await sdk.messages.batches.cancel(batch.id, extra_query={"abort_running": "true"})
            assert canceling.processing_status in ("canceling", "ended")
            ended = await wait_ended(sdk, batch.id, timeout=10)
            await wait_until(lambda: fake.cut == 2, what="the upstream to see both connections closed")
            lines = [r async for r in await sdk.messages.batches.results(batch.id)]
    assert received == 2 and len(fake.calls) == 2  # nothing sent after the cancel
    assert all(call.cut for call in fake.calls) and fake.served == 0
    assert ended.request_counts.canceled == 10 and ended.request_counts.processing == 0
    assert sorted(r.result.type for r in lines) == ["canceled"] * 10


async def test_without_abort_running_the_running_requests_finish(tmp_path: Path) -> None:
    with FakeUpstream(latency=1.0, watch_disconnects=True) as fake:
        async with running_server(settings_for(tmp_path, fake, "builtin")) as srv, async_client_for(srv) as sdk:
            batch = await sdk.messages.batches.create(requests=[simple_request(f"r{i}", f"q{i}") for i in range(10)])
            await wait_until(lambda: fake.in_flight == 2, what="two requests running upstream")
            await sdk.messages.batches.cancel(batch.id)
            ended = await wait_ended(sdk, batch.id, timeout=10)
    assert (ended.request_counts.succeeded, ended.request_counts.canceled) == (2, 8)
    assert fake.cut == 0 and len(fake.calls) == 2


async def test_a_setting_makes_every_cancel_a_hard_one(tmp_path: Path) -> None:
    with FakeUpstream(latency=60, watch_disconnects=True) as fake:
        settings = settings_for(tmp_path, fake, "builtin", abort_running_on_cancel=True)
        async with running_server(settings) as srv, async_client_for(srv) as sdk:
            batch = await sdk.messages.batches.create(requests=[simple_request(f"r{i}", f"q{i}") for i in range(4)])
            await wait_until(lambda: fake.in_flight == 2, what="two requests running upstream")
            await sdk.messages.batches.cancel(batch.id)  # the plain SDK call
            ended = await wait_ended(sdk, batch.id, timeout=10)
            await wait_until(lambda: fake.cut == 2, what="both connections closed")
            # ... and ?abort_running=false asks for the hosted behaviour back.
            soft = await sdk.messages.batches.create(requests=[simple_request(f"s{i}", f"s{i}") for i in range(4)])
            await wait_until(lambda: fake.in_flight == 2, what="two more running")
            still = await sdk.messages.batches.cancel(soft.id, extra_query={"abort_running": "false"})
            # Two run upstream and one claimed ahead waits for a slot (dropped when one frees); the
            # fourth was still in the store and is canceled at once. None is cut.
            assert still.processing_status == "canceling" and still.request_counts.processing == 3
            assert fake.in_flight == 2 and fake.cut == 2
            # A soft cancel can be made hard later: the two still running upstream are cut then.
            await sdk.messages.batches.cancel(soft.id, extra_query={"abort_running": "true"})
            upgraded = await wait_ended(sdk, soft.id, timeout=10)
            await wait_until(lambda: fake.cut == 4, what="the other two connections closed")
    assert ended.request_counts.canceled == 4
    assert upgraded.request_counts.canceled == 4


async def test_a_bad_flag_is_refused(tmp_path: Path) -> None:
    import anthropic

    async with running_server(make_settings(tmp_path)) as srv, async_client_for(srv) as sdk:
        batch = await sdk.messages.batches.create(requests=[simple_request("a", "[[simulate latency=5]]")])
        with pytest.raises(anthropic.BadRequestError, match="abort_running: Input should be a valid boolean"):
            await sdk.messages.batches.cancel(batch.id, extra_query={"abort_running": "maybe"})
        await sdk.messages.batches.cancel(batch.id, extra_query={"abort_running": "1"})
        ended = await wait_ended(sdk, batch.id, timeout=5)
    assert ended.request_counts.canceled == 1
