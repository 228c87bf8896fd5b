"""One exception handler for every route: whatever fails, the client gets the API's error body and
a request id, and a bug is one ERROR line with its traceback (not two, not text/plain)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from conftest import ThreadedServer, make_settings, raw_client, running_server, simple_request
from msgbatch.api.app import MsgBatchServer

KEY = "sk-x"
AUTH = {"x-api-key": KEY}
B = "/v1/messages/batches"


class Boom(RuntimeError):
    pass


def boom(*args: Any, **kwargs: Any) -> Any:
    raise Boom("a bug")


def check_500(resp: httpx2.Response) -> None:
    assert resp.status_code == 500, resp.text
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert body["type"] == "error"
    assert body["error"] == {"type": "api_error", "message": "Internal server error"}
    assert resp.headers["request-id"] == body["request_id"]
    assert resp.headers["cache-control"] == "no-store"


def unhandled(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[MsgBatchServer]:
    async with running_server(make_settings(tmp_path)) as server:
        yield server


@pytest.mark.parametrize(
    ("target", "method", "path"),
    [
        ("manager.get", "GET", f"{B}/msgbatch_0000000000000000000000Zz"),
        ("manager.list_batches", "GET", B),
        ("manager.create_once", "POST", B),
        ("manager.get", "GET", f"{B}/msgbatch_0000000000000000000000Zz/stats"),  # the dashboard's route
        ("metrics.render", "GET", "/metrics"),
    ],
)
async def test_a_bug_in_any_route_is_a_500_in_the_api_shape(
    srv: MsgBatchServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, target: str, method: str,
    path: str,
) -> None:  # fmt: skip
    owner, name = target.split(".")
    monkeypatch.setattr(getattr(srv, owner), name, boom)
    async with raw_client(srv) as http:
        resp = await http.request(method, path, headers=AUTH, json={"requests": [simple_request("a")]})
    check_500(resp)
    errors = unhandled(caplog)
    assert len(errors) == 1, errors
    assert errors[0].getMessage() == f"api.unhandled method={method} path={path}"
    assert errors[0].exc_info is not None and errors[0].exc_info[0] is Boom


def test_a_bug_on_a_real_server_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with ThreadedServer(make_settings(tmp_path)) as live:
        live.server.manager.list_batches = boom  # type: ignore[method-assign]
        resp = httpx2.get(f"{live.base_url}{B}", headers=AUTH, timeout=10)
        check_500(resp)
        # The server itself is fine: the next call on the same routes answers.
        assert httpx2.get(f"{live.base_url}/health", timeout=10).status_code == 200
    errors = unhandled(caplog)
    assert [r.getMessage() for r in errors] == [f"api.unhandled method=GET path={B}"]


def test_a_bug_mid_stream_cuts_the_response(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Once the results have started, the answer cannot turn into an error: the connection is cut,
    so the client sees an incomplete response, never a clean (short) end."""
    with ThreadedServer(make_settings(tmp_path)) as live:
        made = httpx2.post(f"{live.base_url}{B}", headers=AUTH, json={"requests": [simple_request("a")]}, timeout=10)
        batch_id = made.json()["id"]
        for _ in range(500):
            got = httpx2.get(f"{live.base_url}{B}/{batch_id}", headers=AUTH, timeout=10).json()
            if got["processing_status"] == "ended":
                break
        real_results = live.server.manager.results

        async def failing_results(*args: Any, **kwargs: Any) -> AsyncIterator[list[bytes]]:
            pages = await real_results(*args, **kwargs)

            async def broken() -> AsyncIterator[list[bytes]]:
                async for page in pages:
                    yield page
                raise Boom("the store fell over")

            return broken()

        live.server.manager.results = failing_results  # type: ignore[method-assign]
        with pytest.raises(httpx2.RemoteProtocolError):
            httpx2.get(f"{live.base_url}{B}/{batch_id}/results", headers=AUTH, timeout=10)
    messages = [r.getMessage() for r in unhandled(caplog)]
    assert messages[0] == f"api.unhandled method=GET path={B}/{batch_id}/results", messages
    assert unhandled(caplog)[0].exc_info is not None


async def test_errors_of_the_api_are_answered_not_logged(srv: MsgBatchServer, caplog: pytest.LogCaptureFixture) -> None:
    async with raw_client(srv) as http:
        assert (await http.get(f"{B}/msgbatch_0000000000000000000000Zz", headers=AUTH)).status_code == 404
        assert (await http.post(B, headers=AUTH, content=b"{")).status_code == 400
        assert (await http.get(B)).status_code == 401
        assert (await http.put(B, headers=AUTH)).status_code == 405
        assert (await http.get("/nowhere")).status_code == 404
    assert unhandled(caplog) == []
