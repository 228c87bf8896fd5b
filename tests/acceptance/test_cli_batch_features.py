"""The client commands for msgbatch's features beyond the hosted API, as subprocesses against a
real `msgbatch serve` (with a webhook receiver configured): submit options, list by metadata,
results --partial, watch --follow, retry --output, cancel --abort-running, webhooks list|redeliver.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_cli import CLI

from conftest import ServeProcess
from webhook_receiver import SECRET, Receiver

# Short-lived processes of their own: these run beside the other tests, not one at a time.
pytestmark = pytest.mark.alongside

KEY = "sk-cli-features"
MODEL = "claude-sonnet-4-5-20250929"


def request(custom_id: str, text: str = "Hello") -> dict[str, Any]:
    params = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": text}]}
    return {"custom_id": custom_id, "params": params}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[ServeProcess]:
    folder = tmp_path_factory.mktemp("cli-features")
    config = folder / "msgbatch.toml"
    config.write_text(f'[[webhooks]]\nurl = "{receiver.url}/hooks"\nsecret_env = "HOOK_SECRET"\n')
    env = {"MSGBATCH_API_KEYS": f"{KEY}=team", "MSGBATCH_CONFIG": str(config), "HOOK_SECRET": SECRET}
    with ServeProcess(folder, "--concurrency", "8", env=env) as proc:
        yield proc


@pytest.fixture
def cli(server: ServeProcess, tmp_path: Path) -> CLI:
    return CLI(server.base_url, tmp_path, key=KEY)


def api(cli: CLI, path: str) -> Any:
    return httpx.get(cli.base_url + path, headers={"x-api-key": KEY}).json()


def until_ended(cli: CLI, batch_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        batch: dict[str, Any] = api(cli, f"/v1/messages/batches/{batch_id}")
        if batch["processing_status"] == "ended":
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.05)


def test_submit_with_options_one_key_per_body_and_list_by_metadata(cli: CLI, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [request(f"r{i}") for i in range(5)])
    report = cli.json(
        "submit", str(source), "--max-requests", "3", "--metadata", "team=cli", "--metadata", "run=1",
        "--fail-fast", "100:0.9", "--wait", "--poll-interval", "0.1",
    )  # fmt: skip
    batches = report["batches"]
    assert [sum(b["request_counts"].values()) for b in batches] == [3, 2]
    assert all(b["metadata"] == {"team": "cli", "run": "1"} for b in batches)
    assert all(b["fail_fast"] == {"min_results": 100, "max_error_rate": 0.9} for b in batches)
    listed = cli.json("batches", "list", "--metadata", "team=cli", "--metadata", "run=1")
    assert sorted(b["id"] for b in listed["data"]) == sorted(b["id"] for b in batches)
    assert cli.json("batches", "list", "--metadata", "team=nobody")["data"] == []
    table = cli.ok("batches", "list", "--metadata", "team=cli")
    assert "METADATA" in table.splitlines()[0] and "team=cli,run=1" in table
    details = cli.ok("batches", "get", batches[0]["id"])
    assert "metadata" in details and "team=cli, run=1" in details and "100 results, 0.9 error rate" in details
    bad = cli("submit", str(source), "--fail-fast", "lots")
    assert bad.returncode == 2 and "MIN_RESULTS:MAX_ERROR_RATE" in bad.stderr
    bad = cli("batches", "list", "--metadata", "team")
    assert bad.returncode == 2 and "expected KEY=VALUE" in bad.stderr


def test_results_partial_and_watch_follow(cli: CLI, tmp_path: Path) -> None:
    rows = [request(f"fast-{i}") for i in range(6)]
    # Slow enough that the batch still runs while three CLI processes start, on a busy machine.
    rows += [request(f"slow-{i}", f"slow [[simulate latency={6 + i * 0.5}]]") for i in range(4)]
    created = cli.json("submit", str(write_jsonl(tmp_path / "in.jsonl", rows)))
    batch_id = created["batches"][0]["id"]
    not_yet = cli("results", batch_id, "--json")
    assert not_yet.returncode == 1 and "--partial" in not_yet.stderr
    partial = [json.loads(line) for line in cli.ok("results", batch_id, "--partial", "--json").splitlines()]
    assert {r["custom_id"] for r in partial} <= {r["custom_id"] for r in rows} and len(partial) < 10
    followed = cli("watch", batch_id, "--follow", "--poll-interval", "0.1")
    assert followed.returncode == 0, followed.stderr
    lines = [json.loads(line) for line in followed.stdout.splitlines()]
    assert sorted(r["custom_id"] for r in lines) == sorted(r["custom_id"] for r in rows)  # each once
    assert all(r["result"]["type"] == "succeeded" for r in lines)
    assert "ended" in followed.stderr  # the final counts go to stderr
    assert cli("watch", batch_id, "--follow", "--json").returncode == 2


def test_retry_waits_and_writes_one_line_per_custom_id(cli: CLI, tmp_path: Path) -> None:
    rows = [request(f"ok-{i}") for i in range(4)]
    rows += [request(f"bad-{i}", "[[simulate error=not_found_error]]") for i in range(3)]
    parent = cli.json("submit", str(write_jsonl(tmp_path / "in.jsonl", rows)), "--wait", "--poll-interval", "0.1")
    parent_id = parent["batches"][0]["id"]
    child = cli.json("retry", parent_id, "--wait", "--output", "merged.jsonl", "--poll-interval", "0.1")
    assert child["retry_of"] == parent_id and child["processing_status"] == "ended"
    assert sum(child["request_counts"].values()) == 3
    merged = {json.loads(line)["custom_id"]: line for line in (tmp_path / "merged.jsonl").read_text().splitlines()}
    assert sorted(merged) == sorted(r["custom_id"] for r in rows)
    from_child = {json.loads(line)["custom_id"]: line for line in cli.ok("results", child["id"], "--json").splitlines()}
    from_parent = {json.loads(line)["custom_id"]: line for line in cli.ok("results", parent_id, "--json").splitlines()}
    assert all(merged[c] == from_child[c] for c in from_child)  # the new results replace the failed ones
    assert all(merged[c] == from_parent[c] for c in merged if c.startswith("ok-"))
    assert api(cli, f"/v1/messages/batches/{parent_id}")["retried_by"] == child["id"]
    nothing = cli("retry", parent_id, "--only", "expired")
    assert nothing.returncode == 1 and "nothing to retry" in nothing.stderr
    assert cli("retry", parent_id, "--only", "weird").returncode == 2


def test_cancel_abort_running_stops_what_runs(cli: CLI, tmp_path: Path) -> None:
    rows = [request(f"r{i}", "[[simulate latency=60]]") for i in range(4)]
    batch_id = cli.json("submit", str(write_jsonl(tmp_path / "in.jsonl", rows)))["batches"][0]["id"]
    deadline = time.monotonic() + 10
    while "msgbatch_requests_in_flight 4" not in httpx.get(cli.base_url + "/metrics").text:
        assert time.monotonic() < deadline, "the four requests never ran"
        time.sleep(0.05)
    canceled = cli.json("batches", "cancel", batch_id, "--abort-running")
    assert canceled["processing_status"] in ("canceling", "ended")
    ended = until_ended(cli, batch_id, timeout=10)  # not the 60 s the requests would take
    assert ended["request_counts"]["canceled"] == 4


def test_webhooks_list_and_redeliver(cli: CLI, tmp_path: Path, receiver: Receiver) -> None:
    batch_id = cli.json("submit", str(write_jsonl(tmp_path / "in.jsonl", [request("a")])), "--wait")["batches"][0]["id"]

    def delivered() -> list[dict[str, Any]]:
        page: list[dict[str, Any]] = cli.json("webhooks", "list", "--batch", batch_id)["data"]
        return page if page and page[0]["status"] == "delivered" else []

    deadline = time.monotonic() + 15
    while not (found := delivered()):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    [delivery] = found
    assert delivery["event"] == "message_batch.ended" and delivery["attempts"] == 1
    table = cli.ok("webhooks", "list", "--status", "delivered")
    assert delivery["id"] in table and "message_batch.ended" in table
    before = len([r for r in receiver.received if r.event["data"]["id"] == batch_id])
    assert cli.json("webhooks", "redeliver", delivery["id"])["status"] == "pending"
    deadline = time.monotonic() + 15
    while len([r for r in receiver.received if r.event["data"]["id"] == batch_id]) < before + 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert len(receiver.verified()) == len(receiver.received)
    assert cli("webhooks", "redeliver", "whdel_999999").returncode == 1
