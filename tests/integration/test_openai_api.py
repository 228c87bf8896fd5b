"""The OpenAI Batch API through the official `openai` SDK (async, in process over an ASGI transport,
strict response validation; and sync, on a real port), on SQLite and on PostgreSQL.

Upload, create, poll, download the output and error files, list with pagination, cancel, delete,
workspace isolation, every bad input (status and OpenAI error body, nothing stored), the two APIs
side by side, each endpoint on the simulator and on HTTP backends (a chat body goes to an
`openai` upstream as written; it is translated for an `anthropic` one), expiry and /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from openai.types import Batch, CreateEmbeddingResponse, FileObject
from openai.types.chat import ChatCompletion
from test_metrics import parse_metrics, total

from conftest import (
    TEST_KEY,
    ThreadedServer,
    async_client_for,
    fresh_pg_database,
    make_settings,
    raw_client,
    running_server,
    simple_request,
    wait_ended,
)
from fake_upstream import FakeUpstream
from msgbatch.api.app import MsgBatchServer
from msgbatch.backends.anthropic import AnthropicBackend
from msgbatch.backends.base import CallContext
from msgbatch.backends.limiter import AdaptiveLimiter
from msgbatch.backends.mock import MockBackend
from msgbatch.backends.openai import OpenAIBackend
from msgbatch.backends.retry import RetryPolicy
from msgbatch.backends.router import Route, Router
from msgbatch.backends.simulate import SimulatorBackend, simulate

CHAT = "/v1/chat/completions"
FINAL = ("completed", "failed", "cancelled", "expired")


def chat_line(custom_id: str, text: str = "Hello", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": "gpt-test", "max_tokens": 32, "messages": [{"role": "user", "content": text}], **body},
    }


def jsonl(lines: list[Any]) -> bytes:
    return b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines)


def openai_client_for(srv: MsgBatchServer, api_key: str = TEST_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=api_key,
        base_url="http://testserver/v1",
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=srv.app), base_url="http://testserver"),
        _strict_response_validation=True,
        max_retries=0,
    )


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "openai.db")
    else:
        with fresh_pg_database() as url:
            yield url


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, database: str, **settings: Any) -> AsyncIterator[MsgBatchServer]:
    router = settings.pop("router", None)
    async with running_server(make_settings(tmp_path, database=database, **settings), router=router) as srv:
        yield srv


@pytest.fixture
async def srv(tmp_path: Path, database: str) -> AsyncIterator[MsgBatchServer]:
    async with serving(tmp_path, database) as server:
        yield server


@pytest.fixture
async def client(srv: MsgBatchServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai_client_for(srv) as c:
        yield c


async def submit(
    client: openai.AsyncOpenAI, lines: list[Any], endpoint: str = CHAT, **create: Any
) -> tuple[FileObject, Batch]:
    uploaded = await client.files.create(file=("requests.jsonl", jsonl(lines)), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        **create,
    )
    return uploaded, batch


async def poll(client: openai.AsyncOpenAI, batch_id: str, timeout: float = 30.0) -> Batch:
    deadline = time.monotonic() + timeout
    while True:
        batch = await client.batches.retrieve(batch_id)
        if batch.status in FINAL:
            return batch
        assert time.monotonic() < deadline, f"batch did not end: {batch}"
        await asyncio.sleep(0.02)


async def lines_of(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = await client.files.content(file_id)
    text = content.text
    assert text.endswith("\n") and "\n\n" not in text  # JSONL: newline-terminated, no blank lines
    return [json.loads(raw) for raw in text.splitlines()]


# -- the whole flow --------------------------------------------------------------------------


async def test_upload_create_poll_download(client: openai.AsyncOpenAI) -> None:
    lines = [chat_line(f"request {i}", f"Question {i}?") for i in range(20)]
    lines.append(chat_line('odd "id"\n', "[[simulate error=invalid_request_error]]"))
    lines.append(chat_line("no-model") | {"body": {"messages": [{"role": "user", "content": "hi"}]}})
    uploaded, created = await submit(client, lines, metadata={"team": "eval"})
    assert (uploaded.purpose, uploaded.filename, uploaded.bytes, uploaded.status) == (
        "batch",
        "requests.jsonl",
        len(jsonl(lines)),
        "processed",
    )
    assert uploaded.expires_at == uploaded.created_at + 30 * 86400
    assert created.status == "in_progress" and created.object == "batch"
    assert (created.endpoint, created.input_file_id, created.completion_window) == (CHAT, uploaded.id, "24h")
    assert created.request_counts is not None and created.request_counts.total == 22
    assert created.metadata == {"team": "eval"} and created.errors is None
    assert created.expires_at == created.created_at + 86400 and created.in_progress_at == created.created_at
    assert created.output_file_id is None and created.error_file_id is None

    batch = await poll(client, created.id)
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (20, 2)
    assert batch.completed_at is not None and batch.finalizing_at == batch.completed_at
    assert batch.failed_at is None and batch.cancelled_at is None and batch.expired_at is None

    output = await lines_of(client, batch.output_file_id)
    errors = await lines_of(client, batch.error_file_id)
    assert sorted(r["custom_id"] for r in output + errors) == sorted(line["custom_id"] for line in lines)
    completion_tokens = 0
    for r in output:
        assert r["id"].startswith("batch_req_") and r["error"] is None
        assert r["response"]["status_code"] == 200 and r["response"]["request_id"].startswith("req_")
        answer = ChatCompletion.model_validate(r["response"]["body"])
        assert answer.model == "gpt-test" and answer.usage is not None
        number = r["custom_id"].split()[1]
        assert (
            answer.choices[0].message.content
            == f'Regarding "Question {number}?":' + answer.choices[0].message.content.split(":", 1)[1]
        )  # type: ignore[union-attr]
        completion_tokens += answer.usage.completion_tokens
    by_id = {r["custom_id"]: r for r in errors}
    assert by_id['odd "id"\n']["response"]["status_code"] == 400
    assert by_id['odd "id"\n']["response"]["body"]["error"]["type"] == "invalid_request_error"
    assert by_id["no-model"]["response"]["body"]["error"]["message"] == "you must provide a model parameter"
    assert batch.usage is not None and batch.usage.output_tokens == completion_tokens
    assert batch.usage.total_tokens == batch.usage.input_tokens + batch.usage.output_tokens > completion_tokens

    for file_id, kind in ((batch.output_file_id, "output"), (batch.error_file_id, "error")):
        assert file_id is not None
        found = await client.files.retrieve(file_id)
        assert (found.purpose, found.filename) == ("batch_output", f"{batch.id}_{kind}.jsonl")
        assert found.bytes == len((await client.files.content(file_id)).content)
        assert found.created_at == batch.completed_at
    # The input file is kept, byte for byte.
    assert (await client.files.content(uploaded.id)).content == jsonl(lines)


async def test_list_batches_and_files_with_pagination(client: openai.AsyncOpenAI) -> None:
    made = [(await submit(client, [chat_line(f"r{i}")]))[1] for i in range(5)]
    newest_first = [b.id for b in reversed(made)]
    page = await client.batches.list(limit=2)
    assert [b.id for b in page.data] == newest_first[:2] and page.has_more
    assert [b.id async for b in await client.batches.list(limit=2)] == newest_first
    last = await client.batches.list(limit=2, after=newest_first[3])
    assert [b.id for b in last.data] == newest_first[4:] and not last.has_more
    for b in made:
        await poll(client, b.id)
    everything = [f async for f in await client.files.list(limit=3)]
    assert len(everything) == 10  # 5 uploads, 5 output files
    assert [f.id async for f in await client.files.list(limit=1)] == [f.id for f in everything]
    assert [f.id async for f in await client.files.list(limit=4, order="asc")] == [f.id for f in everything][::-1]
    created = [f.created_at for f in everything]
    assert created == sorted(created, reverse=True)
    uploads = [f async for f in await client.files.list(purpose="batch", limit=2)]
    assert [f.purpose for f in uploads] == ["batch"] * 5
    outputs = [f async for f in await client.files.list(purpose="batch_output")]
    assert sorted(f.id for f in outputs) == sorted(f"file-{b}-output" for b in newest_first)


async def test_cancel(tmp_path: Path, database: str) -> None:
    gate = asyncio.Semaphore(0)

    async def held(params: dict[str, Any], context: CallContext) -> dict[str, Any]:
        await gate.acquire()
        return simulate(params)[0]

    router = Router([], MockBackend(held))
    async with serving(tmp_path, database, router=router, concurrency=2) as server, openai_client_for(server) as c:
        _, created = await submit(c, [chat_line(f"r{i}") for i in range(10)])
        for _ in range(100):  # until two requests hold the backend
            if server.dispatcher and len(server.dispatcher._running) >= 2:
                break
            await asyncio.sleep(0.02)
        cancelling = await c.batches.cancel(created.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
        assert cancelling.request_counts is not None
        running = cancelling.request_counts.total - cancelling.request_counts.failed
        assert running == 2 and cancelling.request_counts.completed == 0  # 8 canceled at once
        assert (await c.batches.cancel(created.id)).status == "cancelling"  # again: unchanged
        for _ in range(running):
            gate.release()
        batch = await poll(c, created.id)
        assert batch.status == "cancelled" and batch.cancelled_at is not None
        assert batch.request_counts is not None
        assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 8)
        errors = await lines_of(c, batch.error_file_id)
        assert {r["error"]["code"] for r in errors} == {"batch_cancelled"} and len(errors) == 8
        assert all(r["response"] is None for r in errors)
        assert len(await lines_of(c, batch.output_file_id)) == 2
        with pytest.raises(openai.BadRequestError) as refused:
            await c.batches.cancel(created.id)
        assert refused.value.body == {
            "message": "Cannot cancel a batch with status 'cancelled'.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }


async def test_delete_files(client: openai.AsyncOpenAI) -> None:
    uploaded, created = await submit(client, [chat_line("a"), chat_line("b", "[[simulate error=api_error]]")])
    deleted = await client.files.delete(uploaded.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (uploaded.id, True, "file")
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError):
            await call(uploaded.id)
    batch = await poll(client, created.id)  # its requests were copied at create
    assert batch.status == "completed" and batch.request_counts.completed == 1  # type: ignore[union-attr]
    assert batch.output_file_id is not None and batch.error_file_id is not None
    assert (await client.files.delete(batch.output_file_id)).deleted
    with pytest.raises(openai.NotFoundError):
        await client.files.content(batch.output_file_id)
    assert [f.id async for f in await client.files.list()] == [batch.error_file_id]
    assert len(await lines_of(client, batch.error_file_id)) == 1


async def test_workspace_isolation(tmp_path: Path, database: str) -> None:
    workspaces = {"research": ["sk-a"], "eval": ["sk-b"]}
    async with (
        serving(tmp_path, database, workspaces=workspaces) as server,
        openai_client_for(server, "sk-a") as a,
        openai_client_for(server, "sk-b") as b,
    ):
        uploaded, created = await submit(a, [chat_line("x")])
        done = await poll(a, created.id)
        assert done.output_file_id is not None
        theirs = [uploaded.id, done.output_file_id]
        for file_id in theirs:
            for call in (b.files.retrieve, b.files.content, b.files.delete):
                with pytest.raises(openai.NotFoundError) as hidden:
                    await call(file_id)
                assert hidden.value.body == {
                    "message": f"No such File object: {file_id}",
                    "type": "invalid_request_error",
                    "param": "id",
                    "code": None,
                }
        for call in (b.batches.retrieve, b.batches.cancel):
            with pytest.raises(openai.NotFoundError):
                await call(created.id)
        with pytest.raises(openai.NotFoundError) as refused:
            await b.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        assert refused.value.body["param"] == "input_file_id"  # type: ignore[index]
        assert [f async for f in await b.files.list()] == []
        assert [x async for x in await b.batches.list()] == []
        assert len([f async for f in await a.files.list()]) == 2


# -- bad input: OpenAI's status and error body, nothing stored ------------------------------------


def error(message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"message": message, "type": "invalid_request_error", "param": param, "code": code}


def missing(name: str) -> dict[str, Any]:
    return error(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")


def invalid(name: str, message: str) -> dict[str, Any]:
    return error(message, param=name, code="invalid_value")


async def test_bad_uploads(tmp_path: Path, database: str) -> None:
    async with serving(tmp_path, database, max_file_bytes=1000) as server, openai_client_for(server) as c:
        good = jsonl([chat_line("a")])
        too_large = error("File is too large. The maximum is 1,000 bytes.", param="file")
        not_jsonl = error("Invalid file format for Batch API. Must be .jsonl", param="file")
        fine_tune = "Invalid value for 'purpose': 'fine-tune'. msgbatch keeps files for batches: 'batch'."
        short = {"anchor": "created_at", "seconds": 60}
        bounds = "Invalid 'expires_after.seconds': must be between 3600 and 2592000."
        too_short = invalid("expires_after.seconds", bounds)
        cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
            ({"file": ("notes.txt", good), "purpose": "batch"}, not_jsonl),
            ({"file": ("big.jsonl", b"x" * 1001), "purpose": "batch"}, too_large),
            ({"file": ("huge.jsonl", b"x" * 300_000), "purpose": "batch"}, too_large),
            ({"file": ("a.jsonl", good), "purpose": "fine-tune"}, invalid("purpose", fine_tune)),
            ({"file": ("a.jsonl", good), "purpose": "batch", "expires_after": short}, too_short),
        ]
        for args, expected in cases:
            with pytest.raises(openai.BadRequestError) as refused:
                await c.files.create(**args)
            assert refused.value.status_code == 400 and refused.value.body == expected, args
        async with raw_client(server) as http:
            headers = {"authorization": f"Bearer {TEST_KEY}"}
            answer = await http.post("/v1/files", json={"purpose": "batch"}, headers=headers)
            assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error"
            other = {"other": ("a", b"x")}
            answer = await http.post("/v1/files", data={"purpose": "batch"}, files=other, headers=headers)
            assert (answer.status_code, answer.json()["error"]) == (400, missing("file"))
            answer = await http.post("/v1/files", files={"file": ("a.jsonl", good)}, headers=headers)
            assert answer.json()["error"]["code"] == "missing_required_parameter"
        assert [f async for f in await c.files.list()] == []  # nothing stored half-way
        ok = await c.files.create(
            file=("a.jsonl", good), purpose="batch", expires_after={"anchor": "created_at", "seconds": 3600}
        )
        assert ok.expires_at == ok.created_at + 3600


async def test_bad_create_calls(client: openai.AsyncOpenAI) -> None:
    uploaded = await client.files.create(file=("a.jsonl", jsonl([chat_line("a")])), purpose="batch")
    good = {"input_file_id": uploaded.id, "endpoint": CHAT, "completion_window": "24h"}
    endpoints = "'/v1/chat/completions', '/v1/completions', '/v1/embeddings'"
    bad_endpoint = invalid("endpoint", f"Invalid value: '/v1/responses'. Supported values are: {endpoints}.")
    bad_window = invalid("completion_window", "Invalid value: '1h'. Supported values are: '24h'.")
    many = invalid("metadata", "Invalid 'metadata': at most 16 pairs, got 17.")
    seconds = "Invalid 'output_expires_after.seconds': must be between 3600 and 2592000."
    expiry = invalid("output_expires_after.seconds", seconds)
    unknown = "file-batch_0000000000000000000000000-output"
    cases: list[tuple[dict[str, Any], int, dict[str, Any]]] = [
        ({**good, "input_file_id": None}, 400, missing("input_file_id")),
        ({**good, "endpoint": None}, 400, missing("endpoint")),
        ({**good, "completion_window": None}, 400, missing("completion_window")),
        ({**good, "endpoint": "/v1/responses"}, 400, bad_endpoint),
        ({**good, "completion_window": "1h"}, 400, bad_window),
        ({**good, "metadata": {f"k{i}": "v" for i in range(17)}}, 400, many),
        ({**good, "output_expires_after": {"anchor": "created_at", "seconds": 5}}, 400, expiry),
        ({**good, "input_file_id": "file-nope"}, 404, error("No such File object: file-nope", param="input_file_id")),
        ({**good, "input_file_id": unknown}, 404, error(f"No such File object: {unknown}", param="id")),
    ]
    for body, status, expected in cases:
        with pytest.raises(openai.APIStatusError) as refused:
            await client.post("/batches", body={k: v for k, v in body.items() if v is not None}, cast_to=Batch)
        assert (refused.value.status_code, refused.value.body) == (status, expected), body
    assert [b async for b in await client.batches.list()] == []  # nothing stored half-way
    finished = await poll(client, (await client.batches.create(**good)).id)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as refused:
        await client.batches.create(input_file_id=finished.output_file_id or "", endpoint=CHAT, completion_window="24h")
    purpose = "Invalid 'input_file_id': the file's purpose must be 'batch'."
    assert refused.value.body == invalid("input_file_id", purpose)


@pytest.mark.parametrize(
    ("content", "codes"),
    [
        (b"this is not JSONL\n{also not}\n", [("invalid_json_line", 1), ("invalid_json_line", 2)]),
        (jsonl([chat_line("a"), chat_line("b") | {"url": "/v1/embeddings"}]), [("url_mismatch", 2)]),
        (jsonl([chat_line("a"), chat_line("b"), chat_line("a")]), [("duplicate_custom_id", 3)]),
        (b"\n", [("empty_file", None)]),
        (jsonl([chat_line(str(i)) for i in range(4)]), [("too_many_tasks", None)]),
    ],
    ids=["not-jsonl", "url-mismatch", "duplicate-custom-id", "empty", "too-many"],
)
async def test_bad_input_files_fail_the_batch(
    tmp_path: Path, database: str, content: bytes, codes: list[tuple[str, int | None]]
) -> None:
    async with serving(tmp_path, database, max_file_lines=3) as server, openai_client_for(server) as c:
        uploaded = await c.files.create(file=("in.jsonl", content), purpose="batch")
        batch = await c.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        assert batch.status == "failed" and batch.failed_at == batch.created_at
        assert batch.errors is not None and batch.errors.object == "list"
        assert [(e.code, e.line) for e in batch.errors.data or []] == codes
        assert all(e.message for e in batch.errors.data or [])
        assert batch.request_counts is not None and batch.request_counts.total == 0
        assert batch.output_file_id is None and batch.error_file_id is None and batch.in_progress_at is None
        assert (await c.batches.retrieve(batch.id)).status == "failed"
        assert [f.purpose async for f in await c.files.list()] == ["batch"]  # no output files
        with pytest.raises(openai.BadRequestError):
            await c.batches.cancel(batch.id)


async def test_auth_and_unknown_ids(tmp_path: Path, database: str) -> None:
    async with (
        serving(tmp_path, database, workspaces={"w": ["sk-right"]}) as server,
        openai_client_for(server, "sk-wrong") as wrong,
        openai_client_for(server, "sk-right") as right,
    ):
        with pytest.raises(openai.AuthenticationError) as refused:
            await wrong.batches.list()
        assert refused.value.body == error("Incorrect API key provided.", code="invalid_api_key")
        async with raw_client(server) as http:
            answer = await http.get("/v1/files")
            assert answer.status_code == 401 and answer.json()["error"]["message"].startswith("You didn't provide")
            answer = await http.get("/v1/batches/nope/extra", headers={"authorization": "Bearer sk-right"})
            assert (answer.status_code, answer.json()) == (404, {"error": error("Not found")})
        for missing in ("batch_nope", "msgbatch_0D8XGV3qTtA7L0k1NYrDoj3C"):
            with pytest.raises(openai.NotFoundError) as hidden:
                await right.batches.retrieve(missing)
            assert hidden.value.body == error(f"No batch found with id '{missing}'.", param="batch_id")


# -- the two APIs side by side ---------------------------------------------------------------


async def test_each_api_sees_its_own_batches(client: openai.AsyncOpenAI, srv: MsgBatchServer) -> None:
    async with async_client_for(srv) as claude:
        message_batch = await claude.messages.batches.create(requests=[simple_request("m1")])  # type: ignore[list-item]
        _, openai_batch = await submit(client, [chat_line("o1")])
        assert [b.id async for b in claude.messages.batches.list()] == [message_batch.id]
        assert [b.id async for b in await client.batches.list()] == [openai_batch.id]
        with pytest.raises(anthropic.NotFoundError) as hidden:
            await claude.messages.batches.retrieve(openai_batch.id)
        assert hidden.value.body["error"] == {"type": "not_found_error", "message": "Message Batch ID not found."}  # type: ignore[index]
        with pytest.raises(openai.NotFoundError):
            await client.batches.retrieve(message_batch.id)
        ended = await wait_ended(claude, message_batch.id)
        assert ended.request_counts.succeeded == 1
        results = [r async for r in await claude.messages.batches.results(message_batch.id)]
        assert [(r.custom_id, r.result.type) for r in results] == [("m1", "succeeded")]
        assert (await poll(client, openai_batch.id)).status == "completed"


# -- the endpoints on each kind of backend ---------------------------------------------------------


async def test_embeddings_and_completions_on_the_simulator(client: openai.AsyncOpenAI) -> None:
    bodies = [{"model": "emb", "input": ["a", f"t{i}"], "dimensions": 8} for i in range(3)]
    lines = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings", "body": b} for i, b in enumerate(bodies)]
    _, created = await submit(client, lines, endpoint="/v1/embeddings")
    batch = await poll(client, created.id)
    assert batch.status == "completed" and batch.usage is not None and batch.usage.input_tokens == 6
    answers = [
        CreateEmbeddingResponse.model_validate(r["response"]["body"])
        for r in await lines_of(client, batch.output_file_id)
    ]
    assert all(len(a.data) == 2 and len(a.data[0].embedding) == 8 for a in answers)
    assert answers[0].data[0].embedding == answers[2].data[0].embedding  # the same input, the same vector
    prompts = [
        {
            "custom_id": "c",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "m", "prompt": "Once", "max_tokens": 4},
        }
    ]
    _, created = await submit(client, prompts, endpoint="/v1/completions")
    [line] = await lines_of(client, (await poll(client, created.id)).output_file_id)
    assert line["response"]["body"]["object"] == "text_completion"
    assert line["response"]["body"]["choices"][0]["finish_reason"] == "length"


async def test_chat_goes_natively_to_an_openai_upstream(tmp_path: Path, database: str) -> None:
    with FakeUpstream() as fake:
        fake.plan("flaky", [429, 503])
        retry = RetryPolicy(max_attempts=3, base=0.01, cap=0.02)
        backend = AdaptiveLimiter(OpenAIBackend("vllm", fake.url + "/v1", model="served-name"), 8, retry=retry)
        router = Router([Route("gpt-*", backend)], SimulatorBackend())
        async with serving(tmp_path, database, router=router) as server, openai_client_for(server) as c:
            weird = chat_line("weird", "Hi", seed=7, logit_bias={"50256": -100}, vendor_extension={"beam": [1, 2.5]})
            lines = [
                weird,
                chat_line("flaky", "flaky"),
                chat_line("routed-elsewhere") | {"body": {**weird["body"], "model": "other"}},
            ]
            _, created = await submit(c, lines)
            batch = await poll(c, created.id)
            assert batch.request_counts.completed == 3  # type: ignore[union-attr]
            [sent] = [call for call in fake.calls if call.key == "Hi"]
            assert sent.path == "/v1/chat/completions"
            assert sent.body == {**weird["body"], "model": "served-name"}  # as written, unknown keys and all
            assert len(fake.calls_for("flaky")) == 3  # 429, 503, then the answer
            output = {r["custom_id"]: r for r in await lines_of(c, batch.output_file_id)}
            assert output["weird"]["response"]["body"]["id"] == "chatcmpl-fake"  # the upstream's answer, as it came
            assert output["routed-elsewhere"]["response"]["body"]["model"] == "other"  # the simulator's
            embedding = {
                "custom_id": "v",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": "gpt-emb", "input": "x", "dimensions": 3},
            }
            _, created = await submit(c, [embedding], endpoint="/v1/embeddings")
            [line] = await lines_of(c, (await poll(c, created.id)).output_file_id)
            assert line["response"]["body"]["data"][0]["embedding"] == [1.0, 0.0, 0.0]
            assert fake.calls[-1].path == "/v1/embeddings"


async def test_chat_is_translated_for_an_anthropic_upstream(tmp_path: Path, database: str) -> None:
    with FakeUpstream() as fake:
        router = Router([], AdaptiveLimiter(AnthropicBackend("claude", fake.url), 8))
        async with serving(tmp_path, database, router=router) as server, openai_client_for(server) as c:
            line = chat_line("t", "Translate me", stop=["X"])
            line["body"]["messages"].insert(0, {"role": "system", "content": "Be brief."})
            embedding = {
                "custom_id": "v",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": "m", "input": "x"},
            }
            _, chats = await submit(c, [line])
            _, vectors = await submit(c, [embedding], endpoint="/v1/embeddings")
            [answered] = await lines_of(c, (await poll(c, chats.id)).output_file_id)
            answer = ChatCompletion.model_validate(answered["response"]["body"])
            assert answer.choices[0].message.content == "echo: Translate me"
            [sent] = [call for call in fake.calls if call.path == "/v1/messages"]
            assert sent.body["system"] == "Be brief." and sent.body["stop_sequences"] == ["X"]
            assert sent.body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Translate me"}]}]
            failed = await poll(c, vectors.id)
            [refused] = await lines_of(c, failed.error_file_id)
            assert refused["response"]["status_code"] == 400
            assert "does not serve embeddings" in refused["response"]["body"]["error"]["message"]


async def test_expiry(tmp_path: Path, database: str) -> None:
    async with (
        serving(tmp_path, database, expiry_seconds=0.5, simulate_latency=5) as server,
        openai_client_for(server) as c,
    ):
        _, created = await submit(c, [chat_line(f"r{i}") for i in range(3)])
        batch = await poll(c, created.id, timeout=20)
        assert batch.status == "expired" and batch.expired_at is not None
        errors = await lines_of(c, batch.error_file_id)
        assert sorted(r["custom_id"] for r in errors) == ["r0", "r1", "r2"]
        assert {r["error"]["code"] for r in errors} == {"batch_expired"}
        assert batch.output_file_id is None


async def test_metrics_cover_both_apis(client: openai.AsyncOpenAI, srv: MsgBatchServer) -> None:
    _, created = await submit(client, [chat_line("a"), chat_line("b")])
    await poll(client, created.id)
    async with async_client_for(srv) as claude:
        await claude.messages.batches.create(requests=[simple_request("m")])  # type: ignore[list-item]
    async with raw_client(srv) as http:
        _, samples = parse_metrics((await http.get("/metrics")).text)
    assert total(samples, "msgbatch_batches_created_total", api="openai") == 1
    assert total(samples, "msgbatch_batches_created_total", api="messages") == 1
    assert total(samples, "msgbatch_requests_accepted_total", api="openai") == 2
    assert total(samples, "msgbatch_files_uploaded_total") == 1
    assert total(samples, "msgbatch_requests_total", result="succeeded", backend="simulate") >= 2


# -- the sync SDK, on a real port ------------------------------------------------------------


def test_sync_sdk_on_a_real_port(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl([chat_line(f"r{i}") for i in range(50)]))
    with ThreadedServer(make_settings(tmp_path)) as live:
        client = openai.OpenAI(
            api_key=TEST_KEY, base_url=live.base_url + "/v1", _strict_response_validation=True, max_retries=0
        )
        with client, path.open("rb") as source:
            uploaded = client.files.create(file=source, purpose="batch")
            assert uploaded.filename == "requests.jsonl" and uploaded.bytes == path.stat().st_size
            batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
            while batch.status not in FINAL:
                time.sleep(0.02)
                batch = client.batches.retrieve(batch.id)
            assert batch.status == "completed" and batch.output_file_id is not None
            with client.files.with_streaming_response.content(batch.output_file_id) as streamed:
                lines = [json.loads(raw) for raw in streamed.iter_lines() if raw]
            assert sorted(r["custom_id"] for r in lines) == sorted(f"r{i}" for i in range(50))
            assert [b.id for b in client.batches.list(limit=1)] == [batch.id]
            assert len(list(client.files.list(limit=1))) == 2
