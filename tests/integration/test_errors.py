"""Every error path of WIRE.md: raw HTTP (exact bodies and headers) and the SDK's exception classes."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.types.messages import MessageBatchIndividualResponse

from conftest import (
    ThreadedServer,
    async_client_for,
    gated_simulator,
    make_settings,
    raw_client,
    running_server,
    simple_request,
    wait_ended,
    wait_until,
)
from msgbatch.api.app import MsgBatchServer
from msgbatch.backends.router import Route, Router
from msgbatch.backends.simulate import SimulatorBackend

KEY = "sk-a"
AUTH = {"x-api-key": KEY}
REQUEST_ID = re.compile(r"^req_[0-9A-Za-z]+$")
NOT_FOUND = "Message Batch ID not found."
NO_RESULTS = "Message Batch ID has no available results."
IN_PROGRESS_DELETE = "In progress batches cannot be deleted. Consider canceling the batch instead."
MAX_BODY = 4_000
MAX_REQUESTS = 5


def body_of(n: int, **extra: Any) -> dict[str, Any]:
    return {"requests": [simple_request(f"r{i}") for i in range(n)], **extra}


def assert_error(resp: httpx2.Response, status: int, error_type: str, message: str | None = None) -> str:
    """The one error shape; returns the message."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"type", "error", "request_id"}, body
    assert body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == error_type, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if message is not None:
        assert body["error"]["message"] == message, body
    assert isinstance(body["request_id"], str) and REQUEST_ID.match(body["request_id"]), body
    assert resp.headers["request-id"] == body["request_id"]
    message_text: str = body["error"]["message"]
    return message_text


# -- an environment with a batch in progress and one ended -------------------------------------


@dataclass
class Env:
    server: MsgBatchServer
    http: httpx2.AsyncClient
    gate: asyncio.Semaphore
    running: str = ""  # in progress: its first request is held by the gate
    ended: str = ""  # ended (canceled before anything ran)
    extra: dict[str, Any] = field(default_factory=dict)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    gate = asyncio.Semaphore(0)
    backend = gated_simulator(gate)
    settings = make_settings(
        tmp_path,
        workspaces={"ws-a": [KEY], "ws-b": ["sk-b"]},
        max_requests=MAX_REQUESTS,
        max_body_bytes=MAX_BODY,
        concurrency=1,
    )
    async with running_server(settings, router=Router([], backend)) as srv, raw_client(srv) as http:
        e = Env(srv, http, gate)
        made = await http.post("/v1/messages/batches", headers=AUTH, json=body_of(2))
        e.running = made.json()["id"]
        await wait_until(lambda: len(backend.calls) == 1, what="the first request running")
        made = await http.post("/v1/messages/batches", headers=AUTH, json=body_of(1))
        e.ended = made.json()["id"]
        canceled = await http.post(f"/v1/messages/batches/{e.ended}/cancel", headers=AUTH)
        assert canceled.json()["processing_status"] == "ended"
        try:
            yield e
        finally:
            for _ in range(10):
                gate.release()


async def listed_ids(http: httpx2.AsyncClient, headers: dict[str, str] = AUTH) -> list[str]:
    resp = await http.get("/v1/messages/batches", headers=headers, params={"limit": 1000})
    assert resp.status_code == 200
    return [b["id"] for b in resp.json()["data"]]


# -- the walk: every failing case, one exact body shape ----------------------------------------

UNKNOWN = "msgbatch_0000000000000000000000Zz"
B = "/v1/messages/batches"


@dataclass
class Case:
    name: str
    method: str
    path: str
    status: int
    type: str
    message: str | None = None  # exact, when WIRE.md pins it
    prefix: str | None = None
    headers: dict[str, str] | None = None  # None: AUTH
    json: Any = None
    content: bytes | None = None
    params: dict[str, str] | None = None


def _create(name: str, body: Any, message: str | None = None, prefix: str | None = None, **kw: Any) -> Case:
    if isinstance(body, bytes):
        return Case(name, "POST", B, 400, "invalid_request_error", message, prefix, content=body, **kw)
    return Case(name, "POST", B, 400, "invalid_request_error", message, prefix, json=body, **kw)


def _raw_params(params: bytes, custom_id: bytes = b'"a"') -> bytes:
    return b'{"requests": [{"custom_id": ' + custom_id + b', "params": ' + params + b"}]}"


def _nested(depth: int) -> bytes:
    return _raw_params(b'{"model": "m", "x": ' + b"[" * depth + b"]" * depth + b"}")


def _req(custom_id: Any = "a", params: Any = None, drop: str = "") -> dict[str, Any]:
    r: dict[str, Any] = {
        "custom_id": custom_id,
        "params": params if params is not None else simple_request("a")["params"],
    }
    if drop:
        del r[drop]
    return r


CASES = [
    # create: the envelope, checked at once
    _create("invalid-json", b'{"requests": [', prefix="The request body is not valid JSON"),
    _create("not-json-at-all", b"hello", prefix="The request body is not valid JSON"),
    _create("empty-body", b"", prefix="The request body is not valid JSON"),
    _create("body-is-array", []),
    _create("requests-missing", {}),
    _create("requests-missing-other-keys", {"reqs": [_req()]}),
    _create("requests-empty", {"requests": []}),
    _create("requests-object", {"requests": {"custom_id": "a"}}),
    _create("requests-string", {"requests": "a"}),
    _create("requests-null", {"requests": None}),
    _create("request-not-object", {"requests": [1]}),
    _create("too-many-requests", body_of(MAX_REQUESTS + 1)),
    _create("custom-id-missing", {"requests": [_req(drop="custom_id")]}),
    _create("custom-id-null", {"requests": [_req(None)]}),
    _create("custom-id-number", {"requests": [_req(12)]}),
    _create("custom-id-empty", {"requests": [_req("")]}),
    _create("custom-id-space", {"requests": [_req("has space")]}),
    _create("custom-id-dot", {"requests": [_req("a.b")]}),
    _create("custom-id-unicode", {"requests": [_req("caf\u00e9")]}),
    _create("custom-id-newline", {"requests": [_req("abc\n")]}),
    _create("custom-id-65", {"requests": [_req("x" * 65)]}),
    _create("custom-id-second-bad", {"requests": [_req("ok"), _req("not ok")]}),
    _create(
        "custom-id-duplicate",
        {"requests": [_req("dup"), _req("other"), _req("dup")]},
        message="requests: custom_id's must be unique within a batch. Duplicate custom_id found: dup",
    ),
    _create("params-missing", {"requests": [_req(drop="params")]}),
    _create("params-array", {"requests": [_req(params=[])]}),
    _create("params-string", {"requests": [_req(params="hello")]}),
    _create("params-number", {"requests": [_req(params=5)]}),
    _create("params-null", {"requests": [{"custom_id": "a", "params": None}]}),
    _create("params-true", {"requests": [{"custom_id": "a", "params": True}]}),
    # Found by fuzzing: these were a 500 (RecursionError), accepted and stored (invalid UTF-8 inside
    # params, which msgspec keeps raw), or refused with "unexpected end of hex escape".
    _create("params-nested-967", _nested(967), "The request body nests arrays and objects too deeply to be parsed"),
    _create("params-nested-1800", _nested(1800), "The request body nests arrays and objects too deeply to be parsed"),
    _create(
        "params-invalid-utf8",
        _raw_params(b'{"model": "m\xff", "max_tokens": 1, "messages": []}'),
        "The request body is not valid JSON: invalid UTF-8 at byte 55 (invalid start byte)",
    ),
    _create(
        "params-truncated-utf8",
        _raw_params(b'{"model": "caf\xc3", "max_tokens": 1, "messages": []}'),
        prefix="The request body is not valid JSON: invalid UTF-8 at byte 57",
    ),
    _create(
        "params-lone-surrogate",
        _raw_params(b'{"model": "\\ud800", "max_tokens": 1, "messages": []}'),
        prefix="The request body is not valid JSON: \\ud800 at byte 54 is a lone UTF-16 surrogate",
    ),
    _create(
        "params-lone-low-surrogate",
        _raw_params(b'{"model": "x\\udfffy", "max_tokens": 1, "messages": []}'),
        prefix="The request body is not valid JSON: \\udfff at byte 55 is a lone UTF-16 surrogate",
    ),
    _create(
        "custom-id-lone-surrogate",
        _raw_params(b"{}", custom_id=b'"\\ud83d"'),
        prefix="The request body is not valid JSON: \\ud83d at byte 29 is a lone UTF-16 surrogate",
    ),
    Case("too-large", "POST", B, 413, "request_too_large", content=b'{"requests": [' + b" " * MAX_BODY + b"]}"),
    # unknown ids
    Case("retrieve-unknown", "GET", f"{B}/{UNKNOWN}", 404, "not_found_error", NOT_FOUND),
    Case("retrieve-garbage", "GET", f"{B}/not-a-batch", 404, "not_found_error", NOT_FOUND),
    Case("cancel-unknown", "POST", f"{B}/{UNKNOWN}/cancel", 404, "not_found_error", NOT_FOUND),
    Case("delete-unknown", "DELETE", f"{B}/{UNKNOWN}", 404, "not_found_error", NOT_FOUND),
    Case("results-unknown", "GET", f"{B}/{UNKNOWN}/results", 404, "not_found_error", NOT_FOUND),
    # state conflicts (never 409)
    Case("results-before-end", "GET", f"{B}/{{running}}/results", 404, "not_found_error", NO_RESULTS),
    Case("delete-in-progress", "DELETE", f"{B}/{{running}}", 400, "invalid_request_error", IN_PROGRESS_DELETE),
    Case("cancel-ended", "POST", f"{B}/{{ended}}/cancel", 400, "invalid_request_error"),
    # list parameters
    Case("limit-0", "GET", B, 400, "invalid_request_error", params={"limit": "0"}),
    Case("limit-1001", "GET", B, 400, "invalid_request_error", params={"limit": "1001"}),
    Case("limit-negative", "GET", B, 400, "invalid_request_error", params={"limit": "-1"}),
    Case("limit-word", "GET", B, 400, "invalid_request_error", params={"limit": "ten"}),
    Case("limit-float", "GET", B, 400, "invalid_request_error", params={"limit": "2.5"}),
    Case(
        "both-cursors", "GET", B, 400, "invalid_request_error", params={"after_id": "{ended}", "before_id": "{running}"}
    ),
    # routing
    Case("unknown-route", "GET", "/v1/nothing", 404, "not_found_error"),
    Case("unknown-subroute", "GET", f"{B}/{{ended}}/results/more", 404, "not_found_error"),
    Case("unknown-root", "POST", "/v1/messages/batches/x/y/z", 404, "not_found_error"),
    Case("put-collection", "PUT", B, 405, "invalid_request_error"),
    Case("delete-collection", "DELETE", B, 405, "invalid_request_error"),
    Case("patch-batch", "PATCH", f"{B}/{{ended}}", 405, "invalid_request_error"),
    Case("post-batch", "POST", f"{B}/{{ended}}", 405, "invalid_request_error"),
    Case("get-cancel", "GET", f"{B}/{{ended}}/cancel", 405, "invalid_request_error"),
    Case("post-results", "POST", f"{B}/{{ended}}/results", 405, "invalid_request_error"),
    # auth
    *[
        Case(f"no-key-{name}", method, path, 401, "authentication_error", headers={}, json=body)
        for name, method, path, body in [
            ("create", "POST", B, body_of(1)),
            ("list", "GET", B, None),
            ("retrieve", "GET", f"{B}/{{ended}}", None),
            ("cancel", "POST", f"{B}/{{running}}/cancel", None),
            ("delete", "DELETE", f"{B}/{{ended}}", None),
            ("results", "GET", f"{B}/{{ended}}/results", None),
        ]
    ],
    Case("no-key-bad-json", "POST", B, 401, "authentication_error", headers={}, content=b"{"),
    Case("empty-key", "GET", B, 401, "authentication_error", headers={"x-api-key": ""}),
    Case("empty-bearer", "GET", B, 401, "authentication_error", headers={"authorization": "Bearer "}),
    Case("basic-auth", "GET", B, 401, "authentication_error", headers={"authorization": "Basic c2stYTo="}),
    Case("unknown-key", "GET", B, 401, "authentication_error", headers={"x-api-key": "sk-nope"}),
    Case("unknown-bearer", "GET", f"{B}/{{ended}}", 401, "authentication_error", headers={"authorization": "Bearer x"}),
    Case(
        "unknown-key-create", "POST", B, 401, "authentication_error", headers={"x-api-key": "sk-nope"}, json=body_of(1)
    ),
    *[
        Case(
            f"workspace-mismatch-{name}",
            method,
            path,
            403,
            "permission_error",
            headers={**AUTH, "anthropic-workspace-id": "ws-b"},
            json=body,
        )
        for name, method, path, body in [
            ("create", "POST", B, body_of(1)),
            ("list", "GET", B, None),
            ("retrieve", "GET", f"{B}/{{ended}}", None),
            ("cancel", "POST", f"{B}/{{running}}/cancel", None),
            ("delete", "DELETE", f"{B}/{{ended}}", None),
            ("results", "GET", f"{B}/{{ended}}/results", None),
        ]
    ],
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_every_error_has_the_one_shape(env: Env, case: Case) -> None:
    def fill(text: str) -> str:
        return text.replace("{running}", env.running).replace("{ended}", env.ended)

    headers = AUTH if case.headers is None else case.headers
    kwargs: dict[str, Any] = {"headers": headers}
    if case.json is not None:
        kwargs["json"] = case.json
    if case.content is not None:
        kwargs["content"] = case.content
    if case.params is not None:
        kwargs["params"] = {k: fill(v) for k, v in case.params.items()}
    resp = await env.http.request(case.method, fill(case.path), **kwargs)
    message = assert_error(resp, case.status, case.type, case.message)
    if case.prefix is not None:
        assert message.startswith(case.prefix), message
    # Nothing was stored and nothing changed state.
    assert sorted(await listed_ids(env.http)) == sorted([env.running, env.ended])
    running = (await env.http.get(f"{B}/{env.running}", headers=AUTH)).json()
    assert running["processing_status"] == "in_progress"
    assert running["request_counts"]["processing"] == 2


# -- create errors: nothing stored -------------------------------------------------------------


@pytest.fixture
async def small(tmp_path: Path) -> AsyncIterator[MsgBatchServer]:
    settings = make_settings(tmp_path, max_requests=MAX_REQUESTS, max_body_bytes=MAX_BODY)
    async with running_server(settings) as srv:
        yield srv


async def test_create_errors_store_nothing(small: MsgBatchServer) -> None:
    async with raw_client(small) as http:
        for case in CASES:
            if case.method != "POST" or case.path != B or case.headers is not None:
                continue
            kwargs = {"json": case.json} if case.json is not None else {"content": case.content}
            resp = await http.post(B, headers=AUTH, **kwargs)
            assert resp.status_code in (400, 413), (case.name, resp.text)
        assert await listed_ids(http) == []
        # The limits themselves are inclusive.
        assert (await http.post(B, headers=AUTH, json=body_of(MAX_REQUESTS))).status_code == 200
        ok64 = await http.post(B, headers=AUTH, json={"requests": [_req("x" * 64), _req("A-z_0-9")]})
        assert ok64.status_code == 200, ok64.text
        assert len(await listed_ids(http)) == 2


async def test_sdk_exception_classes(small: MsgBatchServer) -> None:
    client = async_client_for(small)
    batches = client.messages.batches
    beta = client.beta.messages.batches
    cases: list[tuple[type[anthropic.APIStatusError], str, Any]] = [
        (anthropic.BadRequestError, "invalid_request_error", lambda: batches.create(requests=[])),
        (anthropic.BadRequestError, "invalid_request_error", lambda: beta.create(requests=[], betas=["x"])),
        (
            anthropic.BadRequestError,
            "invalid_request_error",
            lambda: batches.create(requests=[simple_request(f"r{i}") for i in range(MAX_REQUESTS + 1)]),
        ),
        (anthropic.BadRequestError, "invalid_request_error", lambda: batches.create(requests=[_req("bad id")])),
        (anthropic.BadRequestError, "invalid_request_error", lambda: batches.create(requests=[_req("x" * 65)])),
        (anthropic.BadRequestError, "invalid_request_error", lambda: beta.create(requests=[_req("d"), _req("d")])),
        (anthropic.BadRequestError, "invalid_request_error", lambda: batches.create(requests=[_req(params=[])])),
        (anthropic.BadRequestError, "invalid_request_error", lambda: batches.list(limit=0)),
        (anthropic.BadRequestError, "invalid_request_error", lambda: beta.list(limit=1001)),
        (anthropic.BadRequestError, "invalid_request_error", lambda: batches.list(after_id="a", before_id="b")),
        (
            anthropic.ContentTooLargeError,
            "request_too_large",
            lambda: batches.create(requests=[simple_request("big", "word " * MAX_BODY)]),
        ),
        (anthropic.NotFoundError, "not_found_error", lambda: batches.retrieve(UNKNOWN)),
        (anthropic.NotFoundError, "not_found_error", lambda: beta.retrieve(UNKNOWN)),
        (anthropic.NotFoundError, "not_found_error", lambda: batches.cancel(UNKNOWN)),
        (anthropic.NotFoundError, "not_found_error", lambda: beta.delete(UNKNOWN)),
        (anthropic.NotFoundError, "not_found_error", lambda: batches.results(UNKNOWN)),
    ]
    async with client:
        for i, (cls, error_type, call) in enumerate(cases):
            with pytest.raises(cls) as exc:
                await call()
            err = exc.value
            assert err.type == error_type, (i, err)
            assert err.api_message, (i, err)
            assert err.request_id and REQUEST_ID.match(err.request_id)
            assert isinstance(err.body, dict) and err.body["request_id"] == err.request_id
            if cls is anthropic.NotFoundError:
                assert err.api_message == NOT_FOUND
        assert (await batches.list()).data == []


async def test_sdk_auth_exception_classes(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, workspaces={"ws-a": ["sk-a"]})
    async with running_server(settings) as srv:
        async with async_client_for(srv, api_key="sk-wrong") as wrong:
            with pytest.raises(anthropic.AuthenticationError) as exc:
                await wrong.messages.batches.list()
            assert exc.value.type == "authentication_error"
            with pytest.raises(anthropic.AuthenticationError):
                await wrong.beta.messages.batches.create(requests=[simple_request("a")])
        async with async_client_for(srv, api_key="sk-a") as right:
            with pytest.raises(anthropic.PermissionDeniedError) as perm:
                await right.messages.batches.list(workspace_id="ws-other")
            assert perm.value.type == "permission_error"
            with pytest.raises(anthropic.PermissionDeniedError):
                await right.messages.batches.create(requests=[simple_request("a")], workspace_id="ws-other")
            assert (await right.messages.batches.list()).data == []
            made = await right.messages.batches.create(requests=[simple_request("a")], workspace_id="ws-a")
            assert (await right.messages.batches.retrieve(made.id, workspace_id="ws-a")).id == made.id


async def test_workspace_header_in_open_mode(server: MsgBatchServer) -> None:
    async with raw_client(server) as http:
        ok = await http.get(B, headers={"x-api-key": "anything", "anthropic-workspace-id": "default"})
        assert ok.status_code == 200
        bad = await http.get(B, headers={"x-api-key": "anything", "anthropic-workspace-id": "wrkspc_other"})
        assert_error(bad, 403, "permission_error")


# -- the request limits at their real defaults ---------------------------------------------------


def tiny_body(n: int) -> bytes:
    return b'{"requests":[' + b",".join(b'{"custom_id":"r%d","params":{}}' % i for i in range(n)) + b"]}"


async def test_default_request_count_limit(tmp_path: Path) -> None:
    # No worker: the accepted 100,000 requests are stored, not run.
    settings = make_settings(tmp_path, worker=False)
    assert settings.max_requests == 100_000
    async with running_server(settings) as srv, raw_client(srv, timeout=120) as http:
        resp = await http.post(B, headers=AUTH, content=tiny_body(100_001))
        message = assert_error(resp, 400, "invalid_request_error")
        assert "100,000" in message or "100000" in message
        assert await listed_ids(http) == []
        ok = await http.post(B, headers=AUTH, content=tiny_body(100_000))
        assert ok.status_code == 200, ok.text
        assert ok.json()["request_counts"]["processing"] == 100_000


async def test_body_size_limit_is_inclusive(small: MsgBatchServer) -> None:
    async with raw_client(small) as http:
        core = json.dumps(body_of(1)).encode()
        exact = core[:-1] + b" " * (MAX_BODY - len(core)) + b"}"
        assert len(exact) == MAX_BODY
        assert (await http.post(B, headers=AUTH, content=exact)).status_code == 200
        over = core[:-1] + b" " * (MAX_BODY + 1 - len(core)) + b"}"
        assert_error(await http.post(B, headers=AUTH, content=over), 413, "request_too_large")
        assert len(await listed_ids(http)) == 1


async def test_chunked_body_over_the_limit(small: MsgBatchServer) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"requests": ['
        for _ in range(10):
            yield b" " * 1000
        yield b"]}"

    async with raw_client(small) as http:
        resp = await http.post(B, headers=AUTH, content=chunks())
        assert "content-length" not in resp.request.headers
        assert_error(resp, 413, "request_too_large")
        assert await listed_ids(http) == []


async def _asgi(
    app: Any, method: str, path: str, headers: list[tuple[str, str]], chunks: list[bytes]
) -> tuple[int, dict[str, str], bytes, int]:
    """One request straight into the ASGI app; also returns how many body chunks it read."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    pending = list(chunks)
    reads = 0

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        await asyncio.sleep(3600)  # a client that never sends the rest
        return {"type": "http.disconnect"}

    status = 0
    out_headers: dict[str, str] = {}
    body = b""

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, out_headers, body
        if message["type"] == "http.response.start":
            status = message["status"]
            out_headers = {k.decode(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            body += message.get("body", b"")

    await asyncio.wait_for(app(scope, receive, send), 10)
    return status, out_headers, body, reads


async def test_declared_content_length_is_refused_before_reading(small: MsgBatchServer) -> None:
    headers = [("x-api-key", KEY), ("content-type", "application/json"), ("content-length", str(10**9))]
    status, out_headers, body, reads = await _asgi(small.app, "POST", B, headers, [b'{"requests": ['])
    assert status == 413
    assert reads == 0  # answered from the header alone
    parsed = json.loads(body)
    assert parsed["error"]["type"] == "request_too_large"
    assert out_headers["request-id"] == parsed["request_id"]

    bad = [("x-api-key", KEY), ("content-length", "lots")]
    status, _, body, _ = await _asgi(small.app, "POST", B, bad, [b"{}"])
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"
    async with raw_client(small) as http:
        assert await listed_ids(http) == []


def test_declared_content_length_over_default_limit_on_a_real_socket(tmp_path: Path) -> None:
    # The real default (256 MB): a client announcing more gets 413 before sending any body.
    with ThreadedServer(make_settings(tmp_path)) as srv, socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.settimeout(10)
        head = (
            f"POST /v1/messages/batches HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: {KEY}\r\n"
            f"content-type: application/json\r\ncontent-length: {256 * 1024 * 1024 + 1}\r\n\r\n"
        )
        sock.sendall(head.encode() + b'{"requests": [')
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        status_line, _, rest = data.partition(b"\r\n")
        assert status_line.split()[1] == b"413", data
        payload = json.loads(rest.partition(b"\r\n\r\n")[2])
        assert payload["error"]["type"] == "request_too_large"


# -- params are checked later: errored results, not HTTP errors ----------------------------------


def _errors_of(lines: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    out = {}
    for line in lines:
        parsed = MessageBatchIndividualResponse.model_validate(line)
        if parsed.result.type == "errored":
            assert parsed.result.error.type == "error"
            assert parsed.result.error.request_id and REQUEST_ID.match(parsed.result.error.request_id)
            out[parsed.custom_id] = (parsed.result.error.error.type, parsed.result.error.error.message)
    return out


async def _lines(http: httpx2.AsyncClient, batch_id: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    resp = await http.get(f"{B}/{batch_id}/results", headers=headers)
    assert resp.status_code == 200
    return [json.loads(line) for line in resp.content.split(b"\n") if line]


async def test_bad_params_become_errored_results(aclient: anthropic.AsyncAnthropic, server: MsgBatchServer) -> None:
    good = simple_request("x")["params"]
    no_messages = {k: v for k, v in good.items() if k != "messages"}
    requests = [
        {"custom_id": "no-messages", "params": no_messages},
        {"custom_id": "zero-tokens", "params": {**good, "max_tokens": 0}},
        {"custom_id": "stream", "params": {**good, "stream": True}},
        {"custom_id": "no-model", "params": {k: v for k, v in good.items() if k != "model"}},
        {"custom_id": "empty", "params": {}},
        simple_request("overloaded", "hi [[simulate error=overloaded_error]]"),
        simple_request("fine"),
        {"custom_id": "stream-false", "params": {**good, "stream": False}},
    ]
    made = await aclient.messages.batches.create(requests=requests)  # accepted as a whole
    assert made.request_counts.processing == len(requests)
    ended = await wait_ended(aclient, made.id)
    assert ended.request_counts.errored == 6 and ended.request_counts.succeeded == 2
    async with raw_client(server) as http:
        errors = _errors_of(await _lines(http, made.id, {"x-api-key": "k"}))
    assert errors["no-messages"] == ("invalid_request_error", "messages: Field required")
    assert errors["zero-tokens"] == ("invalid_request_error", "max_tokens: must be greater than or equal to 1")
    assert errors["stream"] == ("invalid_request_error", '"stream=True" is not supported in the Message Batches API')
    assert errors["no-model"][0] == "invalid_request_error" and "model" in errors["no-model"][1]
    assert errors["empty"][0] == "invalid_request_error"
    assert errors["overloaded"][0] == "overloaded_error"
    assert set(errors) == {"no-messages", "zero-tokens", "stream", "no-model", "empty", "overloaded"}


async def test_model_no_backend_serves_is_not_found(tmp_path: Path) -> None:
    router = Router([Route("claude-*", SimulatorBackend())], None)
    async with (
        running_server(make_settings(tmp_path), router=router) as srv,
        async_client_for(srv) as client,
        raw_client(srv) as http,
    ):
        made = await client.messages.batches.create(
            requests=[
                simple_request("served"),
                simple_request("gpt", model="gpt-4o"),
                simple_request("llama", model="llama-3.1-8b-instruct"),
            ]
        )
        ended = await wait_ended(client, made.id)
        assert ended.request_counts.succeeded == 1 and ended.request_counts.errored == 2
        errors = _errors_of(await _lines(http, made.id, {"x-api-key": "k"}))
    assert errors == {
        "gpt": ("not_found_error", "model: gpt-4o"),
        "llama": ("not_found_error", "model: llama-3.1-8b-instruct"),
    }


async def test_unknown_params_pass_through_untouched(tmp_path: Path) -> None:
    backend = gated_simulator()
    params = {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 2048,
        "thinking": {"type": "enabled"},
        "web_search": {"type": "enabled"},
        "citations": {"type": "enabled"},
        "code_execution": {"type": "enabled"},
        "x_future_option": [1, {"nested": None, "list": [True, 2.5, "s"]}],
        "service_tier": "auto",
        "metadata": {"user_id": "u-1"},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]}
        ],
        "container": None,
    }
    async with (
        running_server(make_settings(tmp_path), router=Router([], backend)) as srv,
        async_client_for(srv) as client,
    ):
        made = await client.beta.messages.batches.create(requests=[{"custom_id": "a", "params": params}])
        ended = await wait_ended(client, made.id)
        assert ended.request_counts.succeeded == 1
    assert len(backend.calls) == 1
    seen, _betas = backend.calls[0]
    assert seen == params
    assert list(seen) == list(params)
