"""The OpenAI Batch API against a real `msgbatch serve` with the sync `openai` SDK: the whole flow on
SQLite and on PostgreSQL, an oversized upload refused over a real socket, a crash (SIGKILL) in the
middle of an OpenAI-format batch and of an upload, each followed by a restart on the same database.
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types import Batch

from conftest import ServeProcess, fresh_pg_database

KEY = "sk-acceptance"
CHAT = "/v1/chat/completions"
FINAL = ("completed", "failed", "cancelled", "expired")


def client_for(proc: ServeProcess) -> openai.OpenAI:
    # No retries: a request cut by a crash must not be replayed against the restarted server.
    return openai.OpenAI(api_key=KEY, base_url=proc.base_url + "/v1", max_retries=0, _strict_response_validation=True)


def line(custom_id: str, text: str) -> bytes:
    body = {"model": "gpt-test", "max_tokens": 16, "messages": [{"role": "user", "content": text}]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}).encode() + b"\n"


def wait_final(client: openai.OpenAI, batch_id: str, timeout: float = 90) -> Batch:
    deadline = time.monotonic() + timeout
    while (batch := client.batches.retrieve(batch_id)).status not in FINAL:
        assert time.monotonic() < deadline, f"batch did not end: {batch}"
        time.sleep(0.05)
    return batch


def lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(raw) for raw in client.files.content(file_id).text.splitlines()]


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "serve.db")
    else:
        with fresh_pg_database() as url:
            yield url


def test_the_sdk_against_msgbatch_serve(
    serve_process: Callable[..., ServeProcess], tmp_path: Path, database: str
) -> None:
    server = serve_process("--database", database, env={"MSGBATCH_MAX_FILE_BYTES": "200000"})
    path = tmp_path / "requests.jsonl"
    path.write_bytes(
        b"".join(line(f"q-{i}", f"Question {i}") for i in range(500)) + line("bad", "[[simulate error=api_error]]")
    )
    with client_for(server) as client, path.open("rb") as source:
        uploaded = client.files.create(file=source, purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        done = wait_final(client, batch.id)
        assert done.status == "completed" and done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (500, 1)
        output, errors = lines_of(client, done.output_file_id), lines_of(client, done.error_file_id)
        assert sorted(r["custom_id"] for r in output) == sorted(f"q-{i}" for i in range(500))
        assert [r["custom_id"] for r in errors] == ["bad"] and errors[0]["response"]["status_code"] == 500
        assert [b.id for b in client.batches.list()] == [batch.id]
        assert {f.purpose for f in client.files.list()} == {"batch", "batch_output"}
        # Over a real socket, an upload over the limit is answered, not cut off: the SDK reads the 400.
        with pytest.raises(openai.BadRequestError) as refused:
            client.files.create(file=("big.jsonl", b"x" * 3_000_000), purpose="batch")
        assert refused.value.body["message"].startswith("File is too large.")  # type: ignore[index]
        assert len(list(client.files.list())) == 3
    assert "Traceback" not in server.log.read_text()


def test_kill_mid_openai_batch_then_restart(serve_process: Callable[..., ServeProcess], tmp_path: Path) -> None:
    """Every custom_id ends up exactly once across the output and error files."""
    n = 2_000
    custom_ids = [f'job {i} "quoted"' if i % 7 == 0 else f"job-{i}" for i in range(n)]
    failing = {cid for i, cid in enumerate(custom_ids) if i % 50 == 0}
    content = b"".join(
        line(cid, "[[simulate error=invalid_request_error]]" if cid in failing else f"Item {cid}") for cid in custom_ids
    )
    first = serve_process("--simulate-latency", "0.05", "--concurrency", "40")
    with client_for(first) as client:
        uploaded = client.files.create(file=("in.jsonl", content), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        deadline = time.monotonic() + 30
        while True:
            seen = client.batches.retrieve(batch.id)
            assert seen.request_counts is not None
            if seen.request_counts.completed >= 300:
                break
            assert seen.status == "in_progress", "ended before the crash: make the batch slower"
            assert time.monotonic() < deadline
            time.sleep(0.01)
    first.kill()  # 40 requests in flight, results waiting to be flushed

    second = serve_process("--simulate-latency", "0.005", "--concurrency", "64", port=first.port)
    with client_for(second) as client:
        after = client.batches.retrieve(batch.id)
        assert after.request_counts is not None and after.request_counts.completed >= seen.request_counts.completed
        done = wait_final(client, batch.id)
        assert done.status == "completed" and done.request_counts is not None
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (
            n,
            n - len(failing),
            len(failing),
        )
        output, errors = lines_of(client, done.output_file_id), lines_of(client, done.error_file_id)
    counts = Counter(r["custom_id"] for r in output + errors)
    assert set(counts) == set(custom_ids) and set(counts.values()) == {1}
    assert {r["custom_id"] for r in errors} == failing
    assert len({r["id"] for r in output + errors}) == n


def test_kill_during_upload_stores_nothing(serve_process: Callable[..., ServeProcess]) -> None:
    """A file is there whole or not at all: a server killed while an upload streams in keeps none of it."""
    first = serve_process("--no-worker")
    content = b"".join(line(f"r{i}", "x" * 200) for i in range(20_000))
    boundary = "msgbatchboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n\r\n'
    ).encode()
    body = head + content + f"\r\n--{boundary}--\r\n".encode()
    with socket.create_connection(("127.0.0.1", first.port)) as sock:
        sock.sendall(
            b"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
            b"Content-Type: multipart/form-data; boundary=" + boundary.encode() + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[: len(body) // 2]
        )
        time.sleep(0.5)
        first.kill()
    second = serve_process("--no-worker", port=first.port)
    with client_for(second) as client:
        assert list(client.files.list()) == []
        ok = client.files.create(file=("in.jsonl", content), purpose="batch")
        assert client.files.content(ok.id).content == content
