"""Signed batch webhooks, delivered to a real HTTP receiver started by each test; every signature is
checked with `standardwebhooks` (an independent implementation of the scheme). The kill -9 case
against `msgbatch serve` processes is in tests/acceptance/test_batch_features_processes.py.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic.types.messages import MessageBatch

from conftest import async_client_for, make_settings, raw_client, running_server, simple_request, wait_ended, wait_until
from msgbatch.api.app import MsgBatchServer
from msgbatch.config import ConfigError
from webhook_receiver import SECRET, Receiver

BATCH_SECRET = "whsec_" + "QmF0Y2ggd2ViaG9va3Mgc2lnbmluZyBrZXkh"  # base64 of "Batch webhooks signing key!"
ENDED, CANCELING = "message_batch.ended", "message_batch.canceling"


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    monkeypatch.setenv("BATCH_SECRET", BATCH_SECRET)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def hook_settings(tmp_path: Path, *hooks: dict[str, Any], **overrides: Any) -> Any:
    return make_settings(tmp_path, webhooks=list(hooks), webhook_backoff=0.05, **overrides)


def hook(receiver: Receiver, path: str = "/hooks", **extra: Any) -> dict[str, Any]:
    return {"url": receiver.url + path, "secret_env": "HOOK_SECRET", **extra}


async def deliveries(srv: MsgBatchServer, **query: str) -> list[dict[str, Any]]:
    async with raw_client(srv) as http:
        answer = await http.get("/v1/webhooks/deliveries", params=query, headers={"x-api-key": "k"})
    assert answer.status_code == 200, answer.text
    data: list[dict[str, Any]] = answer.json()["data"]
    return data


async def test_an_ended_batch_is_announced_signed_with_the_batch_as_data(tmp_path: Path, receiver: Receiver) -> None:
    settings = hook_settings(tmp_path, hook(receiver), hook(receiver, "/other-team", workspace="other"))
    async with running_server(settings) as srv, async_client_for(srv) as client:
        batch = await client.messages.batches.create(requests=[simple_request(f"r{i}") for i in range(3)])
        ended = await wait_ended(client, batch.id)
        await wait_until(lambda: len(receiver.received) >= 1, what="the delivery")

        async def recorded() -> bool:  # the receiver's answer is recorded a moment after it got it
            return [d["status"] for d in await deliveries(srv)] == ["delivered"]

        await wait_until(recorded, what="the delivery recorded")
        [shown] = await deliveries(srv)
    [event] = receiver.verified()
    [got] = receiver.received
    assert got.path == "/hooks"  # not the other workspace's receiver
    assert got.headers["webhook-id"] == f"msg_{batch.id}.ended"
    assert got.headers["content-type"] == "application/json"
    assert event["type"] == ENDED and event["timestamp"] == ended.ended_at.isoformat().replace("+00:00", "Z")
    data = MessageBatch.model_validate(event["data"], strict=False)
    assert data.id == batch.id and data.processing_status == "ended" and data.request_counts.succeeded == 3
    assert shown["status"] == "delivered" and shown["attempts"] == 1 and shown["event"] == ENDED
    assert shown["batch_id"] == batch.id and shown["url"] == receiver.url + "/hooks" and shown["source"] == "config"


async def test_cancel_is_announced_then_the_end(tmp_path: Path, receiver: Receiver) -> None:
    only_ended = hook(receiver, "/ended-only", events=[ENDED])
    settings = hook_settings(tmp_path, hook(receiver), only_ended)
    async with running_server(settings) as srv, async_client_for(srv) as client:
        batch = await client.messages.batches.create(requests=[simple_request("slow", "[[simulate latency=0.5]]")])
        await wait_until(lambda: srv.dispatcher is not None and srv.dispatcher._running, what="running")
        await client.messages.batches.cancel(batch.id)
        await wait_until(lambda: len(receiver.received) >= 1, what="canceling")
        await wait_ended(client, batch.id)
        await wait_until(lambda: len(receiver.received) >= 3, what="ended, twice")
    events = [(r.path, r.event["type"], r.event["data"]["processing_status"]) for r in receiver.received]
    assert events[0] == ("/hooks", CANCELING, "canceling")
    assert sorted(events[1:]) == [("/ended-only", ENDED, "ended"), ("/hooks", ENDED, "ended")]
    assert len(receiver.verified()) == 3


@pytest.mark.parametrize("fault", ["status", "timeout"])
async def test_a_receiver_that_fails_is_retried(tmp_path: Path, fault: str) -> None:
    answers: list[int | str] = [500, 503] if fault == "status" else ["hang"]
    with Receiver(answers=answers, hang=2.0) as receiver:
        settings = hook_settings(tmp_path, hook(receiver), webhook_timeout=0.3)
        async with running_server(settings) as srv, async_client_for(srv) as client:
            batch = await client.messages.batches.create(requests=[simple_request("a")])
            await wait_ended(client, batch.id)

            async def delivered() -> bool:
                return [d["status"] for d in await deliveries(srv)] == ["delivered"]

            await wait_until(delivered, timeout=15, what="delivered after retries")
            [shown] = await deliveries(srv)
            metrics = srv.metrics.render().decode()
        tries = len(answers) + 1
        assert len(receiver.received) == shown["attempts"] == tries
        assert len({r.headers["webhook-id"] for r in receiver.received}) == 1  # the same message each time
        assert len({r.body for r in receiver.received}) == 1  # the same body
        assert len(receiver.verified()) == tries
    assert f'msgbatch_webhook_deliveries_total{{event="{ENDED}",outcome="failed"}} {len(answers)}' in metrics
    assert f'msgbatch_webhook_deliveries_total{{event="{ENDED}",outcome="delivered"}} 1' in metrics


async def test_a_delivery_is_given_up_after_the_retry_window(tmp_path: Path) -> None:
    with Receiver(answers=[500] * 1000) as receiver:
        settings = hook_settings(tmp_path, hook(receiver), webhook_retry_for=0.5)
        async with running_server(settings) as srv, async_client_for(srv) as client:
            batch = await client.messages.batches.create(requests=[simple_request("a")])
            await wait_ended(client, batch.id)

            async def gave_up() -> bool:
                return [d["status"] for d in await deliveries(srv)] == ["failed"]

            await wait_until(gave_up, timeout=15, what="given up")
            [shown] = await deliveries(srv, status="failed")
            assert shown["last_status_code"] == 500 and shown["next_attempt_at"] is None
            assert "answered HTTP 500" in shown["last_error"] and shown["attempts"] >= 2
            # Redelivered by hand: due at once, with a fresh window; the receiver is fixed meanwhile.
            receiver.answers.clear()
            async with raw_client(srv) as http:
                again = await http.post(f"/v1/webhooks/deliveries/{shown['id']}/redeliver", headers={"x-api-key": "k"})
            assert again.status_code == 200 and again.json()["status"] == "pending"

            async def delivered() -> bool:
                return [d["status"] for d in await deliveries(srv)] == ["delivered"]

            await wait_until(delivered, timeout=10, what="the redelivery")
    assert receiver.received[-1].headers["webhook-id"] == f"msg_{batch.id}.ended"


async def test_a_per_batch_url_under_an_allowed_prefix(tmp_path: Path, receiver: Receiver) -> None:
    settings = hook_settings(
        tmp_path, webhook_url_prefixes=[receiver.url + "/batches/"], webhook_url_secret_env="BATCH_SECRET"
    )
    async with running_server(settings) as srv, async_client_for(srv) as client:
        url = receiver.url + "/batches/42?token=t"
        batch = await client.messages.batches.create(requests=[simple_request("a")], extra_body={"webhook_url": url})
        assert batch.model_extra == {"webhook_url": url}
        await wait_ended(client, batch.id)
        await wait_until(lambda: len(receiver.received) >= 1, what="the delivery")
        [shown] = await deliveries(srv, batch_id=batch.id)
        for refused_url, message in [
            (receiver.url + "/elsewhere", "not under any of the prefixes"),
            (receiver.url + "/batches/../admin", "not under any of the prefixes"),
            ("ftp://example.com/batches/", "http:// or https:// URL"),
            ("http://user:pw@127.0.0.1/batches/", "credentials"),
        ]:
            with pytest.raises(anthropic.BadRequestError, match=message):
                await client.messages.batches.create(
                    requests=[simple_request("a")], extra_body={"webhook_url": refused_url}
                )
    assert receiver.received[0].path == "/batches/42?token=t"
    [event] = receiver.verified(BATCH_SECRET)
    assert event["data"]["webhook_url"] == url
    assert shown["source"] == "batch" and shown["url"] == receiver.url + "/batches/42"  # no query: it may hold a token


def loopback_name() -> str:
    name = socket.gethostname()
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, 80)}
    except OSError:
        pytest.skip(f"{name} does not resolve here")
    if not addresses or not all(a.startswith("127.") or a == "::1" for a in addresses):
        pytest.skip(f"{name} does not resolve to loopback here ({addresses})")
    return name


async def test_a_per_batch_url_never_reaches_a_loopback_address_the_allow_list_does_not_name(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The host name is allowed, but it resolves to 127.0.0.1: refused at delivery, not sent."""
    name = loopback_name()
    prefix = f"http://{name}:{receiver.port}/"
    settings = hook_settings(tmp_path, webhook_url_prefixes=[prefix], webhook_url_secret_env="BATCH_SECRET")
    async with running_server(settings) as srv, async_client_for(srv) as client:
        batch = await client.messages.batches.create(
            requests=[simple_request("a")], extra_body={"webhook_url": prefix + "hook"}
        )
        await wait_ended(client, batch.id)

        async def refused() -> bool:
            return [d["status"] for d in await deliveries(srv)] == ["failed"]

        await wait_until(refused, what="the delivery refused")
        [shown] = await deliveries(srv)
    assert receiver.received == []
    assert shown["attempts"] == 1 and "loopback address (127." in shown["last_error"]
    assert "allow-list does not name" in shown["last_error"]


async def test_per_batch_urls_are_refused_where_not_enabled(aclient: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="per-batch webhooks are not enabled"):
        await aclient.messages.batches.create(
            requests=[simple_request("a")], extra_body={"webhook_url": "https://hooks.example/x"}
        )


async def test_the_deliveries_api_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as srv, raw_client(srv) as http:
        headers = {"x-api-key": "k"}
        bad = await http.get("/v1/webhooks/deliveries?status=lost", headers=headers)
        assert bad.status_code == 400 and "status: Input should be one of" in bad.json()["error"]["message"]
        unknown = await http.post("/v1/webhooks/deliveries/whdel_99/redeliver", headers=headers)
        assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"
        nonsense = await http.post("/v1/webhooks/deliveries/zzz/redeliver", headers=headers)
        assert nonsense.status_code == 404
        assert (await http.get("/v1/webhooks/deliveries")).status_code == 401


def test_a_missing_or_bad_secret_stops_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOOK_SECRET")
    with pytest.raises(ConfigError, match=r"webhooks\[0\].secret_env: environment variable HOOK_SECRET is not set"):
        MsgBatchServer(hook_settings(tmp_path, {"url": "http://127.0.0.1:9/", "secret_env": "HOOK_SECRET"}))
    monkeypatch.setenv("HOOK_SECRET", "whsec_!!not base64!!")
    with pytest.raises(ConfigError, match="expected a whsec_ secret"):
        MsgBatchServer(hook_settings(tmp_path, {"url": "http://127.0.0.1:9/", "secret_env": "HOOK_SECRET"}))
    with pytest.raises(ConfigError, match="webhook_url_secret_env: required with webhook_url_prefixes"):
        make_settings(tmp_path, webhook_url_prefixes=["https://hooks.example/"])
    with pytest.raises(ConfigError, match=r"webhook-url-prefixes: \[0\]: expected an http:// or https:// URL"):
        make_settings(tmp_path, webhook_url_prefixes=["hooks.example"], webhook_url_secret_env="X")
