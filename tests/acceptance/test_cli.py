"""The `msgbatch` client commands, run as subprocesses against a real `msgbatch serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ServeProcess
from msgbatch.client.http import BatchesClient, ClientError
from msgbatch.client.submit import InputError, bodies, plan
from msgbatch.testing import free_port

# Short-lived processes of their own: these run beside the other tests, not one at a time.
pytestmark = pytest.mark.alongside

KEY = "sk-cli-test"
MODEL = "claude-sonnet-4-5-20250929"


def params(text: str) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": text}]}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with ServeProcess(tmp_path_factory.mktemp("cli-server"), env={"MSGBATCH_API_KEYS": f"{KEY}=team"}) as proc:
        yield proc


class CLI:
    """`msgbatch` as a user runs it, a process of its own, pointed at a server by the SDK's env vars."""

    def __init__(self, base_url: str, cwd: Path, key: str = KEY) -> None:
        self.base_url = base_url
        self.cwd = cwd
        self.key = key

    def __call__(self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Any:
        full_env = {**os.environ, "ANTHROPIC_BASE_URL": self.base_url, "ANTHROPIC_API_KEY": self.key, **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "msgbatch", *args],
            capture_output=True,
            text=True,
            env=full_env,
            cwd=self.cwd,
            input=stdin,
            timeout=120,
        )

    def ok(self, *args: str) -> str:
        done = self(*args)
        assert done.returncode == 0, done.stderr
        return str(done.stdout)

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))


@pytest.fixture
def cli(server: ServeProcess, tmp_path: Path) -> CLI:
    return CLI(server.base_url, tmp_path)


class InProcessCLI(CLI):
    """The same commands through click's runner: no interpreter start-up, for the many small cases."""

    def __call__(self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Any:
        from click.testing import CliRunner

        from msgbatch.cli import main

        full_env = {"ANTHROPIC_BASE_URL": self.base_url, "ANTHROPIC_API_KEY": self.key, **(env or {})}
        old = os.getcwd()
        os.chdir(self.cwd)
        try:
            result = CliRunner().invoke(main, list(args), env=full_env, input=stdin)
        finally:
            os.chdir(old)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def quick_cli(server: ServeProcess, tmp_path: Path) -> CLI:
    return InProcessCLI(server.base_url, tmp_path)


def batch_count(cli: CLI) -> int:
    page = httpx.get(f"{cli.base_url}/v1/messages/batches?limit=1000", headers={"x-api-key": KEY}).json()
    return len(page["data"])


# -- against a running server --------------------------------------------------------------------


def test_submit_splits_25000_lines_waits_and_writes_one_line_per_custom_id(cli: CLI, tmp_path: Path) -> None:
    rows = [{"custom_id": f"q-{i:05d}", "params": params(f"Question number {i}")} for i in range(25_000)]
    source = write_jsonl(tmp_path / "requests.jsonl", rows)
    done = cli(
        "submit", str(source), "--max-requests", "10000", "--wait", "--output", "results.jsonl",
        "--poll-interval", "0.2", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    batches = report["batches"]
    assert [sum(b["request_counts"].values()) for b in batches] == [10_000, 10_000, 5_000]
    assert all(b["processing_status"] == "ended" for b in batches)
    assert sum(b["request_counts"]["succeeded"] for b in batches) == 25_000
    lines = (tmp_path / "results.jsonl").read_bytes().splitlines()
    ids = [json.loads(line)["custom_id"] for line in lines]
    assert len(ids) == 25_000
    assert set(ids) == {r["custom_id"] for r in rows}
    assert not (tmp_path / "results.jsonl.part").exists()
    # Progress went to stderr, naming every batch and the split.
    assert "25,000 requests -> 3 batches" in done.stderr
    for b in batches:
        assert f"created {b['id']}" in done.stderr


def test_bare_params_lines_get_numbered_custom_ids(cli: CLI, tmp_path: Path) -> None:
    source = tmp_path / "bare.jsonl"
    source.write_text(json.dumps(params("one")) + "\n\n" + json.dumps(params("two")) + "\n")
    done = cli("submit", str(source), "-o", "-", "--poll-interval", "0.1", "-q")
    assert done.returncode == 0, done.stderr
    ids = sorted(json.loads(line)["custom_id"] for line in done.stdout.splitlines())
    assert ids == ["line-1", "line-3"]


def test_submit_from_stdin(cli: CLI) -> None:
    done = cli("submit", "-", "--json", "-q", stdin=json.dumps({"custom_id": "s1", "params": params("hi")}) + "\n")
    assert done.returncode == 0, done.stderr
    (batch,) = json.loads(done.stdout)["batches"]
    assert batch["request_counts"]["processing"] + batch["request_counts"]["succeeded"] == 1


def test_results_only_errored_and_custom_id(cli: CLI, quick_cli: CLI, tmp_path: Path) -> None:
    errored = {"e-3", "e-10", "e-17"}
    fail = " [[simulate error=overloaded_error]]"
    rows = [
        {"custom_id": cid, "params": params(f"Item {cid}" + (fail if cid in errored else ""))}
        for cid in (f"e-{i}" for i in range(20))
    ]
    source = write_jsonl(tmp_path / "mixed.jsonl", rows)
    done = cli("submit", str(source), "--wait", "--poll-interval", "0.1", "--json", "-q")
    assert done.returncode == 0, done.stderr
    (batch,) = json.loads(done.stdout)["batches"]
    assert batch["request_counts"]["errored"] == 3

    only = cli("results", batch["id"], "--only", "errored", "--json")
    assert only.returncode == 0, only.stderr
    lines = [json.loads(line) for line in only.stdout.splitlines()]
    assert {line["custom_id"] for line in lines} == errored
    assert {line["result"]["error"]["error"]["type"] for line in lines} == {"overloaded_error"}

    # The other variants in process (same commands, same server; no interpreter start-up each).
    cli = quick_cli
    table = cli("results", batch["id"], "--only", "errored")
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split() == ["CUSTOM_ID", "RESULT", "DETAILS"]
    assert len(table.stdout.splitlines()) == 4 and "overloaded_error" in table.stdout

    one = cli("results", batch["id"], "--custom-id", "e-4", "--json")
    assert [json.loads(line)["custom_id"] for line in one.stdout.splitlines()] == ["e-4"]
    missing = cli("results", batch["id"], "--custom-id", "nope")
    assert missing.returncode == 5 and "no result with custom_id 'nope'" in missing.stderr

    saved = cli("results", batch["id"], "--output", "all.jsonl")
    assert saved.returncode == 0 and len((tmp_path / "all.jsonl").read_text().splitlines()) == 20

    # --fail-on-errors: the batch ended with errored requests.
    again = cli("submit", str(source), "--fail-on-errors", "--poll-interval", "0.1", "-q")
    assert again.returncode == 3, again.stderr
    assert "3 requests did not succeed" in again.stderr


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ('{"custom_id": "a", "params": {}}\n{"custom_id": "b", "params": {\n', 2, "not valid JSON"),
        ('{"custom_id": "a", "params": {}}\n\n{"params": {"model": "m"}}\n', 3, "missing custom_id"),
        ('{"custom_id": "a", "params": {}}\n{"custom_id": "b", "params": {}}\n{"custom_id": "a", "params": {}}\n', 3,
         "duplicate custom_id 'a' (first on line 1)"),
        ('{"custom_id": "no spaces", "params": {}}\n', 1, "must match ^[a-zA-Z0-9_-]{1,64}$"),
        ('{"custom_id": "a", "params": "text"}\n', 1, "params must be a JSON object"),
        ("[1, 2]\n", 1, "expected a JSON object"),
    ],
)  # fmt: skip
def test_bad_input_files_name_the_line_and_exit_2(
    quick_cli: CLI, tmp_path: Path, content: str, line: int, message: str
) -> None:
    cli = quick_cli
    before = batch_count(cli)
    source = tmp_path / "bad.jsonl"
    source.write_text(content)
    done = cli("submit", str(source), "--wait")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"bad.jsonl: line {line}: " in done.stderr and message in done.stderr, done.stderr
    assert batch_count(cli) == before  # nothing was sent


def test_a_bad_file_exits_2_from_a_real_process(cli: CLI, tmp_path: Path) -> None:
    source = tmp_path / "typo.jsonl"
    source.write_text(json.dumps({"custom_id": "a", "params": params("x")}) + "\n{oops\n")
    done = cli("submit", str(source))
    assert done.returncode == 2
    assert done.stderr.startswith(f"Error: {source}: line 2: not valid JSON")


def test_usage_errors_exit_2(quick_cli: CLI, tmp_path: Path) -> None:
    cli = quick_cli
    assert cli("submit", str(tmp_path / "absent.jsonl")).returncode == 2
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    done = cli("submit", str(empty))
    assert done.returncode == 2 and "no requests" in done.stderr
    no_key = cli("batches", "list", env={"ANTHROPIC_API_KEY": ""})
    assert no_key.returncode == 2 and "no API key" in no_key.stderr


def test_batches_list_get_cancel_delete(cli: CLI, quick_cli: CLI, tmp_path: Path) -> None:
    # 256 requests at a time, 1 s each: 20 s of work, canceled long before it is done.
    rows = [{"custom_id": f"c-{i}", "params": params(f"Slow {i} [[simulate latency=1]]")} for i in range(5000)]
    source = write_jsonl(tmp_path / "slow.jsonl", rows)
    (batch,) = cli.json("submit", str(source), "-q")["batches"]
    batch_id = batch["id"]

    listed = quick_cli.json("batches", "list", "--limit", "5")
    assert listed["data"][0]["id"] == batch_id and len(listed["data"]) <= 5
    got = quick_cli.json("batches", "get", batch_id)
    assert got["id"] == batch_id and got["processing_status"] == "in_progress"

    refused = quick_cli("batches", "delete", batch_id)
    assert refused.returncode == 1 and "In progress batches cannot be deleted" in refused.stderr

    canceled = cli.json("batches", "cancel", batch_id)
    assert canceled["processing_status"] in ("canceling", "ended")
    assert canceled["cancel_initiated_at"] is not None

    ended = cli.json("watch", batch_id, "--poll-interval", "0.1", "-q")
    assert ended["processing_status"] == "ended"
    assert ended["request_counts"]["canceled"] > 0  # the requests that had not started
    assert cli.json("batches", "delete", batch_id) == {"id": batch_id, "type": "message_batch_deleted"}
    gone = quick_cli("batches", "get", batch_id)
    assert gone.returncode == 1
    assert "HTTP 404 not_found_error: Message Batch ID not found." in gone.stderr and "request-id req_" in gone.stderr


def test_human_tables(quick_cli: CLI, tmp_path: Path) -> None:
    cli = quick_cli
    source = write_jsonl(tmp_path / "h.jsonl", [{"custom_id": "h1", "params": params("Human readable")}])
    done = cli("submit", str(source), "--wait", "--poll-interval", "0.05")
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()
    assert header.split() == ["ID", "STATUS", "DONE", "SUCCEEDED", "ERRORED", "CANCELED", "EXPIRED", "CREATED"]
    batch_id = row.split()[0]
    assert row.split()[1:6] == ["ended", "1/1", "1", "0", "0"]
    listed = cli("batches", "list", "--limit", "1").stdout.splitlines()
    assert listed[1].startswith(batch_id)
    details = dict(line.split(None, 1) for line in cli("batches", "get", batch_id).stdout.splitlines())
    assert details["id"] == batch_id and details["processing_status"] == "ended"
    assert details["requests"] == "1 (1 done, 100.0%)" and details["results_url"].endswith("/results")
    results = cli("results", batch_id).stdout.splitlines()
    assert results[1].split()[:2] == ["h1", "succeeded"] and 'Regarding "Human readable"' in results[1]
    dry = cli("submit", str(source), "--dry-run", "--max-requests", "1")
    assert dry.returncode == 0 and dry.stdout.splitlines()[1].split()[:3] == ["1", "1-1", "1"]
    assert cli("batches", "delete", batch_id).stdout.strip() == f"deleted {batch_id}"


def test_watch_shows_progress_and_times_out(cli: CLI, quick_cli: CLI, tmp_path: Path) -> None:
    rows = [{"custom_id": f"w-{i}", "params": params(f"W {i} [[simulate latency=0.5]]")} for i in range(10)]
    (batch,) = quick_cli.json("submit", str(write_jsonl(tmp_path / "w.jsonl", rows)), "-q")["batches"]
    early = quick_cli("watch", batch["id"], "--timeout", "0.1", "--poll-interval", "0.05")
    if early.returncode != 0:  # it may have ended already on a fast machine
        assert early.returncode == 4 and "timed out" in early.stderr
    done = cli("watch", batch["id"], "--poll-interval", "0.1")
    assert done.returncode == 0, done.stderr
    assert f"{batch['id']}: 10/10 (100.0%), 10 succeeded, 0 errored, ended" in done.stderr
    assert "ended" in done.stdout.splitlines()[1]


def test_unreachable_server_exits_1(tmp_path: Path) -> None:
    cli = InProcessCLI(f"http://127.0.0.1:{free_port()}", tmp_path)
    done = cli("batches", "list")
    assert done.returncode == 1
    assert "cannot connect to http://127.0.0.1:" in done.stderr


def test_wrong_key_exits_1_with_the_api_message(quick_cli: CLI) -> None:
    done = quick_cli("batches", "list", env={"ANTHROPIC_API_KEY": "wrong-key"})
    assert done.returncode == 1
    assert "HTTP 401 authentication_error: invalid x-api-key" in done.stderr


# -- in process ----------------------------------------------------------------------------------


def test_plan_splits_on_requests_and_on_bytes(tmp_path: Path) -> None:
    rows = [{"custom_id": f"r{i}", "params": params("x" * 100)} for i in range(10)]
    source = write_jsonl(tmp_path / "r.jsonl", rows)
    by_count = plan(str(source), max_requests=4)
    assert [b.requests for b in by_count.batches] == [4, 4, 2]
    assert [(b.first_line, b.last_line) for b in by_count.batches] == [(1, 4), (5, 8), (9, 10)]

    one_size = by_count.batches[2].size  # a body of 2 requests
    by_bytes = plan(str(source), max_bytes=one_size)
    assert [b.requests for b in by_bytes.batches] == [2] * 5
    for planned, spool in bodies(by_bytes):
        body = spool.read()
        assert len(body) == planned.size <= one_size
        assert [r["custom_id"] for r in json.loads(body)["requests"]] == [
            f"r{i - 1}" for i in range(planned.first_line, planned.last_line + 1)
        ]

    with pytest.raises(InputError, match="this request alone is"):
        plan(str(source), max_bytes=100)


def test_plan_keeps_params_bytes_and_reports_at_most_ten_lines(tmp_path: Path) -> None:
    source = tmp_path / "p.jsonl"
    source.write_text('{"custom_id":"k","params":{"b": 1.50, "a":  "\\u00e9"}}\n')
    for _, spool in bodies(plan(str(source))):
        assert spool.read() == b'{"requests":[{"custom_id":"k","params":{"b": 1.50, "a":  "\\u00e9"}}]}'

    many = tmp_path / "many.jsonl"
    many.write_text("not json\n" * 25)
    with pytest.raises(InputError) as caught:
        plan(str(many))
    assert len(caught.value.problems) == 10 and caught.value.more == 15
    assert "and 15 more bad lines" in str(caught.value)


def test_client_retries_overload_and_reports_the_error_envelope() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 3:
            return httpx.Response(529, json={"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
        return httpx.Response(
            404,
            json={"type": "error", "error": {"type": "not_found_error", "message": "gone"}, "request_id": "req_1"},
        )

    client = BatchesClient("http://x", "k", transport=httpx.MockTransport(handler), sleep=lambda _s: None)
    with pytest.raises(ClientError) as caught:
        client.retrieve("msgbatch_1")
    assert len(calls) == 3
    assert caught.value.message == "HTTP 404 not_found_error: gone (request-id req_1)"
    assert calls[0].headers["x-api-key"] == "k" and calls[0].headers["anthropic-version"] == "2023-06-01"


def test_client_reports_a_non_api_error_body() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>Bad Gateway</html>")

    client = BatchesClient("http://x", "k", transport=httpx.MockTransport(handler), sleep=lambda _s: None)
    with pytest.raises(ClientError, match=r"^HTTP 502 api_error: <html>Bad Gateway</html>$"):
        client.list()


def test_progress_lines_and_live_bars() -> None:
    import io

    from msgbatch.client.progress import Display, wait_for

    states = iter(
        [
            {"processing_status": "in_progress", "request_counts": {"processing": 100}},
            {"processing_status": "in_progress", "request_counts": {"processing": 60, "succeeded": 38, "errored": 2}},
            {"processing_status": "ended", "request_counts": {"succeeded": 97, "errored": 3}},
        ]
    )
    now = [0.0]

    class FakeClient:
        def retrieve(self, batch_id: str) -> dict[str, Any]:
            return {"id": batch_id, **next(states)}

    plain = io.StringIO()
    final = wait_for(
        FakeClient(),  # type: ignore[arg-type]
        ["msgbatch_a"],
        display=Display(plain, live=False),
        poll_interval=10,
        clock=lambda: now[0],
        sleep=lambda s: now.__setitem__(0, now[0] + s),
    )
    assert final[0]["processing_status"] == "ended"
    assert plain.getvalue().splitlines() == [
        "msgbatch_a: 0/100 (0.0%), 0 succeeded, 0 errored",
        "msgbatch_a: 40/100 (40.0%), 38 succeeded, 2 errored, 4.0/s, ETA 15s",
        "msgbatch_a: 100/100 (100.0%), 97 succeeded, 3 errored, ended",
    ]

    live = io.StringIO()
    display = Display(live, live=True)
    from msgbatch.client.progress import Tracked

    tracked = [
        Tracked(
            {
                "id": "msgbatch_b",
                "processing_status": "in_progress",
                "request_counts": {"processing": 4, "succeeded": 4},
            }
        )
    ]
    display.update(tracked, 0)
    display.update(tracked, 1)
    first, second = live.getvalue().split("\n", 1)
    assert first == "\x1b[2Kmsgbatch_b  [############------------]  4/8 (50.0%)  4 succeeded, 0 errored"
    assert second.startswith("\x1b[1F\x1b[2Kmsgbatch_b")  # redrawn in place


def test_usage_shows_the_workspaces_tokens(quick_cli: CLI, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "usage.jsonl", [params(f"Usage {i}") for i in range(6)])
    submitted = quick_cli.json("submit", str(source), "--wait", "--poll-interval", "0.1", "--quiet")
    (batch,) = submitted["batches"]
    answer = quick_cli.json("usage", "--group-by", "model")
    assert answer["workspace"] == "team" and answer["group_by"] == ["model"]
    row = next(r for r in answer["data"] if r["model"] == params("x")["model"])
    assert row["succeeded"] >= 6 and answer["total"]["input_tokens"] >= batch["usage"]["input_tokens"] > 0
    shown = quick_cli("usage", "--group-by", "model", "--group-by", "day")
    assert shown.returncode == 0, shown.stderr
    header, *lines = shown.stdout.splitlines()
    assert header.split()[:3] == ["MODEL", "START", "SUCCEEDED"] and lines[-1].startswith("total")
    bad = quick_cli("usage", "--since", "yesterday-ish")
    assert bad.returncode == 1 and "since: expected an RFC 3339 time" in bad.stderr
