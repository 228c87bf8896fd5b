"""`msgbatch submit` with OpenAI batch lines (OpenAI's and vLLM's run-batch files) against a real
`msgbatch serve`: checked before anything is sent, split by endpoint and size, uploaded through
the OpenAI Batch API, and answered in the same format."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_cli import CLI, KEY, cli, quick_cli, server

from msgbatch.client.openai_submit import bodies, is_openai_file, plan

# Short-lived processes of their own: these run beside the other tests, not one at a time.
pytestmark = pytest.mark.alongside

__all__ = ["cli", "quick_cli", "server"]


def line(custom_id: str, url: str = "/v1/chat/completions", **body: Any) -> dict[str, Any]:
    if url == "/v1/embeddings":
        payload: dict[str, Any] = {"model": "emb", "input": custom_id, "dimensions": 4}
    else:
        payload = {"model": "gpt-test", "max_tokens": 8, "messages": [{"role": "user", "content": custom_id}]}
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": {**payload, **body}}


def write(path: Path, rows: list[Any]) -> Path:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows))
    return path


def openai_batch_count(cli: CLI) -> int:
    page = httpx.get(f"{cli.base_url}/v1/batches?limit=100", headers={"authorization": f"Bearer {KEY}"}).json()
    return len(page["data"])


def test_a_vllm_run_batch_file_runs_and_answers_in_its_format(cli: CLI, tmp_path: Path) -> None:
    rows = [line(f"chat {i}") for i in range(120)] + [line(f"vec-{i}", "/v1/embeddings") for i in range(30)]
    rows.insert(7, line("failing", messages=[{"role": "user", "content": "[[simulate error=api_error]]"}]))
    source = write(tmp_path / "run-batch.jsonl", rows)
    assert is_openai_file(str(source))
    flags = ("--max-requests", "50", "--wait", "--output", "out.jsonl", "--poll-interval", "0.1", "--json")
    done = cli("submit", str(source), *flags)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    batches = report["batches"]
    # chat: 121 lines in 50s; embeddings: one batch of 30.
    assert [(b["endpoint"], b["request_counts"]["total"]) for b in batches] == [
        ("/v1/chat/completions", 50), ("/v1/chat/completions", 50), ("/v1/chat/completions", 21), ("/v1/embeddings", 30)
    ]  # fmt: skip
    assert all(b["object"] == "batch" and b["status"] == "completed" for b in batches)
    out = [json.loads(raw) for raw in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert Counter(r["custom_id"] for r in out) == Counter(r["custom_id"] for r in rows)
    by_id = {r["custom_id"]: r for r in out}
    assert by_id["failing"]["response"]["status_code"] == 500
    assert by_id["chat 3"]["response"]["body"]["object"] == "chat.completion"
    assert len(by_id["vec-2"]["response"]["body"]["data"][0]["embedding"]) == 4
    assert "151 requests -> 4 batches" in done.stderr


def test_a_bad_openai_file_names_the_line_and_sends_nothing(quick_cli: CLI, tmp_path: Path) -> None:
    cases = [
        ([line("a"), line("b"), line("a")], 3, "duplicate custom_id 'a' (first on line 1)"),
        ([line("a"), b"{oops"], 2, "not parseable as valid JSON"),
        ([line("a", "/v1/responses")], 1, "url '/v1/responses': msgbatch runs /v1/chat/completions"),
        ([line("a") | {"method": "GET"}], 1, "only POST is supported"),
        ([line("a") | {"custom_id": 5}], 1, "Invalid type for 'custom_id'"),
    ]
    before = openai_batch_count(quick_cli)
    for rows, number, message in cases:
        source = write(tmp_path / "bad.jsonl", rows)
        done = quick_cli("submit", str(source), "--wait")
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert f"bad.jsonl: line {number}: " in done.stderr and message in done.stderr, done.stderr
    assert openai_batch_count(quick_cli) == before


def test_watch_an_openai_batch(cli: CLI, quick_cli: CLI, tmp_path: Path) -> None:
    source = write(tmp_path / "in.jsonl", [line(f"w{i}") for i in range(20)])
    created = quick_cli.json("submit", str(source))["batches"]
    done = quick_cli("watch", created[0]["id"], "--poll-interval", "0.1", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "completed"
    mixed = quick_cli("watch", created[0]["id"], "msgbatch_0D8XGV3qTtA7L0k1NYrDoj3C")
    assert mixed.returncode == 2 and "not both" in mixed.stderr


def test_plan_splits_by_url_lines_and_bytes_keeping_the_lines(tmp_path: Path) -> None:
    rows = [line(f"c{i}", extra="x" * 100) for i in range(10)] + [line("e", "/v1/embeddings")]
    rows.insert(3, line("e2", "/v1/embeddings"))
    source = write(tmp_path / "in.jsonl", rows)
    size = len(json.dumps(rows[0]).encode()) + 1
    the_plan = plan(str(source), max_requests=4, max_bytes=3 * size)
    assert [(b.url, b.requests, b.first_line, b.last_line) for b in the_plan.batches] == [
        ("/v1/chat/completions", 3, 1, 3), ("/v1/embeddings", 2, 4, 12),
        ("/v1/chat/completions", 3, 5, 7), ("/v1/chat/completions", 3, 8, 10), ("/v1/chat/completions", 1, 11, 11),
    ]  # fmt: skip
    content = source.read_bytes().splitlines(keepends=True)
    sent = [spool.read() for _, spool in bodies(the_plan)]
    chat = [b"".join(content[first - 1 : last]) for first, last in [(1, 3), (5, 7), (8, 10), (11, 11)]]
    assert sorted(sent) == sorted([*chat, content[3] + content[11]])  # the lines as they are in the file
    assert not is_openai_file(str(write(tmp_path / "m.jsonl", [{"custom_id": "a", "params": {}}])))
