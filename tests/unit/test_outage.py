"""The outage guard: a backend whose upstream is down is paused and probed, one request at a time."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from msgbatch.backends.base import CallContext, RequestCanceled, request_canceled
from msgbatch.backends.mock import MockBackend
from msgbatch.backends.outage import OutageGuard
from msgbatch.errors import GatewayTimeoutError, InternalServerError, InvalidRequestError, UpstreamUnreachableError


class Upstream:
    """The state of a MockBackend whose upstream can be switched off."""

    def __init__(self) -> None:
        self.up = True
        self.fail_with: Exception | None = None
        self.in_flight = 0
        self.peak_while_down = 0
        self.calls = 0
        self.backend = MockBackend(self.answer, name="gpu-box")

    async def answer(self, params: dict[str, Any], context: CallContext) -> dict[str, Any]:
        self.calls += 1
        if not self.up:
            self.in_flight += 1
            self.peak_while_down = max(self.peak_while_down, self.in_flight)
            await asyncio.sleep(0.01)
            self.in_flight -= 1
            raise UpstreamUnreachableError("cannot connect to upstream gpu-box")
        if self.fail_with is not None:
            raise self.fail_with
        return {"ok": params["n"]}


async def test_requests_wait_out_an_outage_and_go_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    upstream = Upstream()
    guard = OutageGuard(upstream.backend, probe_delay=0.02, max_probe_delay=0.1)
    upstream.up = False
    caplog.set_level(logging.INFO, logger="msgbatch.backends")
    calls = [asyncio.create_task(guard.create_message({"n": i}, CallContext())) for i in range(20)]
    await asyncio.sleep(0.5)
    assert not any(c.done() for c in calls)  # nobody failed: they wait
    assert not guard.available
    probes_before = upstream.calls
    await asyncio.sleep(0.3)
    assert upstream.calls - probes_before <= 6  # one probe at a time, backing off
    upstream.up = True
    answers = await asyncio.wait_for(asyncio.gather(*calls), 2)
    assert sorted(a["ok"] for a in answers) == list(range(20))
    assert guard.available
    down = [r for r in caplog.records if "backend.down" in r.message]
    up = [r for r in caplog.records if "backend.up" in r.message]
    assert len(down) == 1 and down[0].levelno == logging.WARNING and "gpu-box" in down[0].message
    assert len(up) == 1 and up[0].levelno == logging.INFO


async def test_only_one_probe_at_a_time_while_down() -> None:
    upstream = Upstream()
    guard = OutageGuard(upstream.backend, probe_delay=0.01, max_probe_delay=0.02)
    # Trip it with one request, then send many: while down, at most one reaches the upstream.
    upstream.up = False
    first = asyncio.create_task(guard.create_message({"n": 0}, CallContext()))
    await asyncio.sleep(0.05)
    upstream.peak_while_down = 0
    others = [asyncio.create_task(guard.create_message({"n": i}, CallContext())) for i in range(1, 30)]
    await asyncio.sleep(0.4)
    assert upstream.peak_while_down == 1
    upstream.up = True
    await asyncio.wait_for(asyncio.gather(first, *others), 2)


async def test_an_error_answer_means_the_server_is_up() -> None:
    upstream = Upstream()
    guard = OutageGuard(upstream.backend, probe_delay=0.01)
    upstream.up = False
    waiting = asyncio.create_task(guard.create_message({"n": 1}, CallContext()))
    await asyncio.sleep(0.05)
    upstream.up, upstream.fail_with = True, InvalidRequestError("bad prompt", upstream_status=400)
    with pytest.raises(InvalidRequestError):
        await asyncio.wait_for(waiting, 2)
    assert guard.available


async def test_a_connection_cut_mid_answer_does_not_say_the_server_is_up() -> None:
    upstream = Upstream()
    guard = OutageGuard(upstream.backend, probe_delay=0.01)
    upstream.up = False
    waiting = asyncio.create_task(guard.create_message({"n": 1}, CallContext()))
    await asyncio.sleep(0.05)
    # A request that was on its way when the server went down: its connection is reset.
    upstream.up, upstream.fail_with = True, InternalServerError("connection to upstream gpu-box failed")
    with pytest.raises(InternalServerError):
        await asyncio.wait_for(waiting, 2)
    assert not guard.available


async def test_timeouts_spend_attempts_and_pause_the_backend_after_three_in_a_row() -> None:
    upstream = Upstream()
    upstream.fail_with = GatewayTimeoutError("upstream gpu-box did not answer within 1s")
    guard = OutageGuard(upstream.backend, timeouts_to_trip=3, probe_delay=0.01)
    for _ in range(2):
        with pytest.raises(GatewayTimeoutError):
            await guard.create_message({"n": 1}, CallContext())
        assert guard.available
    with pytest.raises(GatewayTimeoutError):  # the third: still the request's own failure ...
        await guard.create_message({"n": 1}, CallContext())
    assert not guard.available  # ... and now the backend is paused
    upstream.fail_with = None
    assert await guard.create_message({"n": 2}, CallContext()) == {"ok": 2}
    assert guard.available


async def test_a_canceled_batch_stops_waiting() -> None:
    upstream = Upstream()
    guard = OutageGuard(upstream.backend, probe_delay=0.05)
    upstream.up = False
    canceled = False

    async def call() -> dict[str, Any]:
        request_canceled.set(lambda: canceled)
        return await guard.create_message({"n": 1}, CallContext())

    waiting = asyncio.create_task(call())
    await asyncio.sleep(0.1)
    canceled = True
    with pytest.raises(RequestCanceled):
        await asyncio.wait_for(waiting, 2)
