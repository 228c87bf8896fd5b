"""Batch features with real `msgbatch` processes: a webhook survives `kill -9` of the server between
the batch's end and its delivery (SQLite and PostgreSQL), and on the scale-out shape (two API
servers and a worker on one PostgreSQL database) an Idempotency-Key holds across processes, a hard
cancel sent to one API server cuts the calls a worker is running upstream, and webhooks are
delivered by whichever process gets to them, signed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import fresh_pg_database
from fake_upstream import FakeUpstream
from msgbatch.testing import free_port, wait_until_answers
from webhook_receiver import SECRET, Receiver

HEADERS = {"x-api-key": "k", "content-type": "application/json"}


class Proc:
    """A msgbatch process that can be killed and started again (keeping its port)."""

    def __init__(self, name: str, args: list[str], folder: Path, env: dict[str, str], port: int | None = None) -> None:
        self.name, self.args, self.env, self.port = name, args, env, port
        self.log = folder / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Proc:
        args = [*self.args, "--port", str(self.port)] if self.port else self.args
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "msgbatch", *args], stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
            )  # fmt: skip
        if self.port:
            wait_until_answers(f"{self.url}/health", process=self.proc, timeout=30)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def processes() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.stop()


def until(check: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def batch_of(n: int, prefix: str = "r", text: str = "Hello") -> dict[str, Any]:
    params = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": text}]}
    return {"requests": [{"custom_id": f"{prefix}{i}", "params": params} for i in range(n)]}


def ended(url: str, batch_id: str) -> dict[str, Any] | None:
    batch: dict[str, Any] = httpx.get(f"{url}/v1/messages/batches/{batch_id}", headers=HEADERS).json()
    return batch if batch["processing_status"] == "ended" else None


def deliveries(url: str, batch_id: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/v1/webhooks/deliveries", params={"batch_id": batch_id}, headers=HEADERS)
    data: list[dict[str, Any]] = answer.json()["data"]
    return data


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_a_webhook_is_delivered_after_kill_9_between_the_end_and_the_delivery(tmp_path: Path, database: str) -> None:
    with contextlib.ExitStack() as stack:
        db = str(tmp_path / "hooks.db") if database == "sqlite" else stack.enter_context(fresh_pg_database())
        receiver = Receiver()  # its port is chosen; nothing listens there yet
        config = tmp_path / "msgbatch.toml"
        config.write_text(f'[[webhooks]]\nurl = "{receiver.url}/hooks"\nsecret_env = "HOOK_SECRET"\n')
        env = {"HOOK_SECRET": SECRET, "MSGBATCH_WEBHOOK_BACKOFF": "2s", "MSGBATCH_POLL_INTERVAL": "0.1"}
        args = ["serve", "--database", db, "--config", str(config)]
        with processes() as running:
            server = Proc("serve", args, tmp_path, env, port=free_port()).start()
            running.append(server)
            batch_id = httpx.post(f"{server.url}/v1/messages/batches", json=batch_of(3), headers=HEADERS).json()["id"]
            until(lambda: ended(server.url, batch_id), what="the batch to end")
            # The event is in the outbox and its first attempt found nobody listening.
            [pending] = until(lambda: [d for d in deliveries(server.url, batch_id) if d["attempts"] >= 1])
            assert pending["status"] == "pending" and "Connect" in pending["last_error"]
            server.kill()
            assert receiver.received == []
            stack.enter_context(receiver)  # the receiver comes up while msgbatch is down
            server.start()
            until(lambda: receiver.received, what="the delivery after the restart")
            [delivered] = until(lambda: [d for d in deliveries(server.url, batch_id) if d["status"] == "delivered"])
        [event] = [e for e in receiver.verified() if e["data"]["id"] == batch_id]
        assert event["type"] == "message_batch.ended" and event["data"]["request_counts"]["succeeded"] == 3
        assert delivered["attempts"] == 2
        assert receiver.received[0].headers["webhook-id"] == f"msg_{batch_id}.ended"


def test_scale_out_keys_hard_cancel_and_webhooks_across_processes(tmp_path: Path) -> None:
    with (
        fresh_pg_database() as db,
        FakeUpstream(latency=60, watch_disconnects=True) as fake,
        Receiver() as receiver,
        processes() as running,
    ):
        config = tmp_path / "msgbatch.toml"
        config.write_text(f'[[webhooks]]\nurl = "{receiver.url}/hooks"\nsecret_env = "HOOK_SECRET"\n')
        env = {"HOOK_SECRET": SECRET, "MSGBATCH_POLL_INTERVAL": "0.2", "MSGBATCH_LIFECYCLE_INTERVAL": "0.2"}
        common = ["--database", db, "--config", str(config)]
        api = [Proc(f"api{i}", ["serve", "--no-worker", *common], tmp_path, env, port=free_port()) for i in (1, 2)]
        worker = Proc("worker", ["worker", *common, "--upstream", f"anthropic={fake.url}", "--concurrency", "2"],
                      tmp_path, env)  # fmt: skip
        for proc in (*api, worker):
            running.append(proc.start())

        # One key, eight creates at once through both API servers: one batch.
        body = batch_of(6, text="tell me a long story")
        keyed = {**HEADERS, "idempotency-key": "scale-out-1"}
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(
                lambda i: httpx.post(f"{api[i % 2].url}/v1/messages/batches", json=body, headers=keyed, timeout=30),
                range(8),
            ))  # fmt: skip
        assert {a.status_code for a in answers} == {200}
        ids = {a.json()["id"] for a in answers}
        assert len(ids) == 1
        batch_id = ids.pop()
        listed = httpx.get(f"{api[0].url}/v1/messages/batches", headers=HEADERS).json()["data"]
        assert [b["id"] for b in listed] == [batch_id]

        # The worker runs two upstream; a hard cancel sent to the other API server cuts them.
        until(lambda: fake.in_flight == 2, what="two requests running upstream")
        canceled = httpx.post(
            f"{api[1].url}/v1/messages/batches/{batch_id}/cancel", params={"abort_running": "true"}, headers=HEADERS
        )
        assert canceled.status_code == 200
        final = until(lambda: ended(api[0].url, batch_id), timeout=20, what="the hard-canceled batch to end")
        until(lambda: fake.cut == 2, what="the upstream to see both connections closed")
        assert final["request_counts"]["canceled"] == 6 and len(fake.calls) == 2 and fake.served == 0

        # Its two events reach the receiver, signed, delivered by whichever process took them.
        until(lambda: len(receiver.received) >= 2, what="the canceling and ended events")
        events = receiver.verified()
        assert sorted(e["type"] for e in events) == ["message_batch.canceling", "message_batch.ended"]
        assert all(e["data"]["id"] == batch_id for e in events)


def test_the_sdk_against_msgbatch_serve(tmp_path: Path) -> None:
    """The official SDK, sync and async, strict validation on, against a real `msgbatch serve`:
    metadata and a key on create, results so far, a hard cancel, the retry of failed lines."""
    import asyncio

    import anthropic
    from anthropic.types.messages import MessageBatch

    with processes() as running:
        server = Proc("serve", ["serve", "--database", str(tmp_path / "sdk.db")], tmp_path, {}, port=free_port())
        running.append(server.start())
        client = anthropic.Anthropic(api_key="k", base_url=server.url, _strict_response_validation=True)
        requests: list[Any] = [
            {
                "custom_id": f"ok-{i}",
                "params": {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
            }
            for i in range(3)
        ]
        requests.append({"custom_id": "bad", "params": {"model": "m", "messages": []}})  # invalid: errored
        requests.append(
            {"custom_id": "slow", "params": {"model": "m", "max_tokens": 8,
                                              "messages": [{"role": "user", "content": "[[simulate latency=60]]"}]}}
        )  # fmt: skip
        with client:
            batch = client.messages.batches.create(
                requests=requests, extra_body={"metadata": {"run": "7"}}, extra_headers={"Idempotency-Key": "sdk-1"}
            )
            again = client.messages.batches.create(
                requests=requests, extra_body={"metadata": {"run": "7"}}, extra_headers={"Idempotency-Key": "sdk-1"}
            )
            assert again.id == batch.id and batch.model_extra == {"metadata": {"run": "7"}}
            until(lambda: client.messages.batches.retrieve(batch.id).request_counts.processing == 1)
            so_far = client.get(
                f"/v1/messages/batches/{batch.id}/results", cast_to=str, options={"params": {"partial": "true"}}
            )
            assert sorted(json.loads(line)["custom_id"] for line in so_far.splitlines()) == [
                "bad",
                "ok-0",
                "ok-1",
                "ok-2",
            ]
            client.messages.batches.cancel(batch.id, extra_query={"abort_running": "true"})
            ended = until(lambda: (b := client.messages.batches.retrieve(batch.id)).processing_status == "ended" and b)
            assert (ended.request_counts.canceled, ended.request_counts.errored) == (1, 1)

        async def retry() -> MessageBatch:
            async with anthropic.AsyncAnthropic(
                api_key="k", base_url=server.url, _strict_response_validation=True
            ) as aclient:
                child = await aclient.post(f"/v1/messages/batches/{batch.id}/retry", cast_to=MessageBatch, body={})
                results = [r async for r in await aclient.messages.batches.results(batch.id)]
                assert len(results) == 5
                return child

        child = asyncio.run(retry())
        assert child.model_extra == {"metadata": {"run": "7"}, "retry_of": batch.id}
        assert child.request_counts.processing == 1  # only the errored line: the canceled one is not asked
