"""The CLI's client sends an Idempotency-Key with each create, and sends a create that timed out
again only to a server that honours keys (msgbatch); to others, never: it may have been stored."""

from __future__ import annotations

import httpx
import pytest

from msgbatch.client.http import BatchesClient, ClientError
from msgbatch.client.options import create_options


def client_for(handler: object) -> BatchesClient:
    return BatchesClient(
        "http://server",
        "k",
        transport=httpx.MockTransport(handler),
        sleep=lambda _s: None,  # type: ignore[arg-type]
    )


def body() -> object:
    return lambda: iter([b'{"requests":[]}'])


@pytest.mark.parametrize("honours", [True, False])
def test_a_keyed_create_that_timed_out_goes_again_only_where_keys_are_honoured(honours: bool) -> None:
    creates: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/webhooks/deliveries":  # msgbatch answers it; the hosted API does not
            return httpx.Response(200 if honours else 404, json={"data": []})
        creates.append(request.headers.get("idempotency-key"))
        if len(creates) == 1:
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(200, json={"id": "msgbatch_1"})

    with client_for(handler) as client:
        if honours:
            assert client.create(body(), 15, idempotency_key="key-1")["id"] == "msgbatch_1"  # type: ignore[arg-type]
            assert creates == ["key-1", "key-1"]
        else:
            with pytest.raises(ClientError, match="did not answer in time"):
                client.create(body(), 15, idempotency_key="key-1")  # type: ignore[arg-type]
            assert creates == ["key-1"]


def test_without_a_key_a_create_is_never_sent_twice() -> None:
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        raise httpx.ReadTimeout("slow", request=request)

    with client_for(handler) as client, pytest.raises(ClientError):
        client.create(body(), 15)  # type: ignore[arg-type]
    assert sent == ["/v1/messages/batches"]  # no probe, no second send


def test_create_options_are_members_of_the_body() -> None:
    assert create_options({}, None, None) == b""
    members = create_options({"team": "a"}, "10:0.5", "https://h/x")
    assert (
        members
        == b',"metadata":{"team":"a"},"fail_fast":{"min_results":10,"max_error_rate":0.5},"webhook_url":"https://h/x"}'[
            :-1
        ]
    )
