"""Against a real `msgbatch serve` process with the sync SDK: the documents' basic usage, and
crashes (SIGKILL) mid-batch, mid-cancel and mid-create, each followed by a restart on the same
database file and port."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from conftest import ServeProcess, simple_request

KEY = "sk-acceptance"


def client_for(proc: ServeProcess) -> anthropic.Anthropic:
    # No retries: a request cut by a crash must not be replayed against the restarted server.
    return anthropic.Anthropic(api_key=KEY, base_url=proc.base_url, max_retries=0, _strict_response_validation=True)


def wait_ended(client: anthropic.Anthropic, batch_id: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while (batch := client.messages.batches.retrieve(batch_id)).processing_status != "ended":
        assert time.monotonic() < deadline, f"batch did not end: {batch}"
        time.sleep(0.05)
    return batch


def result_lines(proc: ServeProcess, batch_id: str) -> list[dict[str, Any]]:
    resp = httpx2.get(f"{proc.base_url}/v1/messages/batches/{batch_id}/results", headers={"x-api-key": KEY}, timeout=60)
    assert resp.status_code == 200, resp.text
    body = resp.content
    assert body.endswith(b"\n") and b"\n\n" not in body
    return [json.loads(line) for line in body.split(b"\n")[:-1]]


def assert_complete(proc: ServeProcess, batch: Any, custom_ids: list[str]) -> Counter[str]:
    """Every custom_id exactly once; the counts are the results' tally; nothing processing."""
    lines = result_lines(proc, batch.id)
    per_id = Counter(line["custom_id"] for line in lines)
    duplicates = {k: v for k, v in per_id.items() if v > 1}
    assert not duplicates, f"{len(duplicates)} custom_ids with more than one result, e.g. {list(duplicates)[:5]}"
    assert set(per_id) == set(custom_ids), (len(per_id), len(custom_ids))
    kinds = Counter(line["result"]["type"] for line in lines)
    counts = batch.request_counts
    assert counts.processing == 0
    assert dict(kinds) == {
        k: v
        for k, v in {
            "succeeded": counts.succeeded,
            "errored": counts.errored,
            "canceled": counts.canceled,
            "expired": counts.expired,
        }.items()
        if v
    }
    return kinds


# -- the basic usage example, end to end --------------------------------------------------------


def test_basic_usage_end_to_end(serve_process: Callable[..., ServeProcess], capsys: pytest.CaptureFixture[str]) -> None:
    proc = serve_process("--simulate-latency", "0.05")
    client = anthropic.Anthropic(api_key="any-key-works", base_url=proc.base_url)

    batch = client.messages.batches.create(
        requests=[
            {
                "custom_id": "request-1",
                "params": {
                    "model": "claude-3-5-sonnet-20241022",
                    "max_tokens": 1024,
                    "messages": [{"role": "user", "content": "What is the capital of France?"}],
                },
            },
            {
                "custom_id": "request-2",
                "params": {
                    "model": "claude-3-5-sonnet-20241022",
                    "max_tokens": 1024,
                    "messages": [{"role": "user", "content": "What is the capital of Spain?"}],
                },
            },
        ]
    )

    print(f"Batch ID: {batch.id}")
    print(f"Status: {batch.processing_status}")

    while batch.processing_status == "in_progress":
        time.sleep(0.02)
        batch = client.messages.batches.retrieve(batch.id)
        print(f"Status: {batch.processing_status}, Counts: {batch.request_counts}")

    if batch.results_url:
        results = client.messages.batches.results(batch.id)
        for result in results:
            print(f"Request {result.custom_id}:")
            if result.result.type == "succeeded":
                print(f" Response: {result.result.message.content}")
            elif result.result.type == "errored":
                print(f" Error: {result.result.error}")
    client.close()

    out = capsys.readouterr().out
    assert "Status: in_progress" in out and "Status: ended" in out
    assert batch.results_url == f"{proc.base_url}/v1/messages/batches/{batch.id}/results"
    assert "Request request-1:" in out and "Request request-2:" in out
    assert 'Regarding "What is the capital of France?"' in out
    assert 'Regarding "What is the capital of Spain?"' in out


# -- SIGKILL mid-batch ----------------------------------------------------------------------------


def test_kill_mid_batch_then_restart(serve_process: Callable[..., ServeProcess]) -> None:
    n = 2_000
    custom_ids = [f"job-{i}" for i in range(n)]
    first = serve_process("--simulate-latency", "0.05", "--concurrency", "40")
    with client_for(first) as client:
        batch = client.messages.batches.create(requests=[simple_request(cid, f"Item {cid}") for cid in custom_ids])
        deadline = time.monotonic() + 30
        while True:
            seen = client.messages.batches.retrieve(batch.id)
            if seen.request_counts.succeeded >= 300:
                break
            assert seen.processing_status == "in_progress", "ended before the crash: make the batch slower"
            assert time.monotonic() < deadline
            time.sleep(0.01)
    first.kill()  # results are being written: 40 requests in flight, more waiting to be flushed

    second = serve_process("--simulate-latency", "0.005", "--concurrency", "64", port=first.port)
    assert second.database == first.database
    with client_for(second) as client:
        after = client.messages.batches.retrieve(batch.id)
        # What was recorded before the crash is still there.
        assert after.request_counts.succeeded >= seen.request_counts.succeeded
        assert sum(after.request_counts.to_dict().values()) == n
        ended = wait_ended(client, batch.id)
    kinds = assert_complete(second, ended, custom_ids)
    assert kinds == {"succeeded": n}


def test_kill_while_canceling_then_restart(serve_process: Callable[..., ServeProcess]) -> None:
    n = 20
    custom_ids = [f"c{i}" for i in range(n)]
    first = serve_process("--concurrency", "4")
    with client_for(first) as client:
        batch = client.messages.batches.create(
            requests=[simple_request(cid, f"{cid} [[simulate latency=3]]") for cid in custom_ids]
        )
        time.sleep(0.3)  # four requests running, for 3 s each
        canceling = client.messages.batches.cancel(batch.id)
        assert canceling.processing_status == "canceling"
        assert canceling.request_counts.processing == 4 and canceling.request_counts.canceled == 16
    first.kill()  # the four running requests die with the process

    second = serve_process(port=first.port)
    with client_for(second) as client:
        # The batch was canceling: it must still end (not wait for its 24 h expiry).
        ended = wait_ended(client, batch.id, timeout=8)
        assert ended.cancel_initiated_at == canceling.cancel_initiated_at
    kinds = assert_complete(second, ended, custom_ids)
    assert kinds["canceled"] >= 16 and kinds["canceled"] + kinds["succeeded"] == n


# -- SIGKILL during create: all or nothing -----------------------------------------------------------

CREATE_N = 100_000


def create_body(n: int = CREATE_N) -> tuple[bytes, list[str]]:
    ids = [f"up-{i}" for i in range(n)]
    body = json.dumps({"requests": [simple_request(cid, f"Upload {cid}") for cid in ids]}).encode()
    return body, ids


def chunks_of(body: bytes, size: int = 256 * 1024) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def check_all_or_nothing(proc: ServeProcess, custom_ids: list[str]) -> str:
    """After the restart: no batch, or one batch holding every request."""
    with client_for(proc) as client:
        batches = list(client.messages.batches.list(limit=1000))
        if not batches:
            return "absent"
        assert len(batches) == 1, batches
        batch = batches[0]
        assert batch.request_counts.to_dict() != {}
        assert sum(batch.request_counts.to_dict().values()) == len(custom_ids)
        # Cancel: every request not run yet gets its `canceled` line at once, which reads back
        # every stored request.
        if batch.processing_status != "ended":
            client.messages.batches.cancel(batch.id)
        ended = wait_ended(client, batch.id)
    assert_complete(proc, ended, custom_ids)
    return "complete"


class Upload(threading.Thread):
    """POST a body in chunks from a thread; `pause_at` holds the upload at that chunk until `go`."""

    def __init__(self, url: str, chunks: list[bytes], pause_at: int | None = None) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.chunks = chunks
        self.pause_at = pause_at
        self.paused = threading.Event()
        self.sent_all = threading.Event()
        self.go = threading.Event()
        self.outcome: Any = None

    def body(self) -> Iterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            if i == self.pause_at:
                self.paused.set()
                self.go.wait(30)
            yield chunk
        self.sent_all.set()

    def run(self) -> None:
        try:
            self.outcome = httpx2.post(
                self.url,
                headers={"x-api-key": KEY, "content-type": "application/json"},
                content=self.body(),
                timeout=60,
            )
        except Exception as exc:  # the server died under it
            self.outcome = exc


def test_kill_mid_upload_stores_nothing(serve_process: Callable[..., ServeProcess]) -> None:
    body, ids = create_body()
    chunks = chunks_of(body)
    first = serve_process("--no-worker")
    upload = Upload(f"{first.base_url}/v1/messages/batches", chunks, pause_at=len(chunks) // 2)
    upload.start()
    assert upload.paused.wait(30)
    first.kill()
    upload.go.set()
    upload.join(30)
    assert isinstance(upload.outcome, Exception), upload.outcome

    second = serve_process("--no-worker", port=first.port)
    assert check_all_or_nothing(second, ids) == "absent"


# The server needs about a second after the last byte to parse and store 100,000 requests here:
# kill it early in that window and late in it.
@pytest.mark.parametrize("delay", [0.4, 0.85])
def test_kill_after_upload_is_all_or_nothing(serve_process: Callable[..., ServeProcess], delay: float) -> None:
    body, ids = create_body()
    first = serve_process("--no-worker")
    upload = Upload(f"{first.base_url}/v1/messages/batches", chunks_of(body))
    upload.start()
    assert upload.sent_all.wait(60)
    time.sleep(delay)  # the server is parsing / storing the 100,000 requests
    first.kill()
    upload.join(30)

    second = serve_process("--no-worker", port=first.port)
    state = check_all_or_nothing(second, ids)
    if isinstance(upload.outcome, httpx2.Response) and upload.outcome.status_code == 200:
        assert state == "complete"  # acknowledged means stored


def _server_bytes_read(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def test_kill_during_sdk_create_is_all_or_nothing(serve_process: Callable[..., ServeProcess]) -> None:
    n = 40_000
    ids = [f"sdk-{i}" for i in range(n)]
    requests = [simple_request(cid, f"Upload {cid}") for cid in ids]
    first = serve_process()
    assert first.proc is not None
    outcome: dict[str, Any] = {}

    def create() -> None:
        with client_for(first) as client:
            try:
                outcome["batch"] = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
            except Exception as exc:
                outcome["error"] = exc

    start = _server_bytes_read(first.proc.pid)
    thread = threading.Thread(target=create, daemon=True)
    thread.start()
    # Kill once the server has read part of the upload (~6 MB in all); without /proc, after a while.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and thread.is_alive():
        read = _server_bytes_read(first.proc.pid)
        if read < 0:
            time.sleep(1.0)
            break
        if read - start > 2_000_000:
            break
        time.sleep(0.002)
    first.kill()
    thread.join(30)
    assert outcome, "the create call neither returned nor failed"

    second = serve_process(port=first.port)  # with a worker: it takes back what the dead one leased
    state = check_all_or_nothing(second, ids)
    if "batch" in outcome:
        assert state == "complete"
