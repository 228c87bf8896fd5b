"""Chaos on the scale-out shape: real processes on one PostgreSQL database, killed with SIGKILL.

Two `msgbatch serve --no-worker` API servers and three `msgbatch worker` processes share a fresh
database. A 20,000-request batch runs on a simulator with latency while workers are killed and
restarted at random moments; then another while the API servers are, with clients polling them.
Whatever dies, every custom_id ends with exactly one result, the counts match the results, and
nothing is left `processing`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest

from msgbatch.testing import ServerDidNotAnswer, free_port, wait_until_answers

HEADERS = {"x-api-key": "chaos", "content-type": "application/json"}
N = 20_000
TYPES = ("succeeded", "errored", "canceled", "expired")

# Short leases and fast housekeeping, so that a killed worker's requests come back in seconds.
ENV = {
    "MSGBATCH_LEASE": "2s",
    "MSGBATCH_LIFECYCLE_INTERVAL": "0.2",
    "MSGBATCH_POLL_INTERVAL": "0.2",
    "MSGBATCH_GRACE": "1s",
}


class Proc:
    """One msgbatch process that can be killed and started again (an API server keeps its port)."""

    def __init__(self, name: str, args: list[str], logs: Path, port: int | None = None) -> None:
        self.name = name
        self.args = args
        self.port = port
        self.log = logs / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [*self.args, "--port", str(self.port)] if self.port else self.args
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "msgbatch", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **ENV},
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.kills += 1

    def stop(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def wait_healthy(self, timeout: float = 60.0) -> None:
        try:
            wait_until_answers(f"{self.url}/ready", process=self.proc, timeout=timeout)
        except ServerDidNotAnswer as exc:
            raise AssertionError(f"{self.name}: {exc}\n{self.log.read_text()[-3000:]}") from None


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str) -> Iterator[tuple[list[Proc], list[Proc], str]]:
    common = ["--database", pg_url, "--log-level", "info"]
    apis = [Proc(f"api-{i}", ["serve", "--no-worker", *common], tmp_path, port=free_port()) for i in range(2)]
    workers = [
        Proc(f"worker-{i}", ["worker", "--concurrency", "8", "--simulate-latency", "0.01", *common], tmp_path)
        for i in range(3)
    ]
    try:
        for proc in apis + workers:  # all at once: the migrations must not trip over each other
            proc.start()
        for api in apis:
            api.wait_healthy()
        yield apis, workers, pg_url
    finally:
        for proc in apis + workers:
            proc.stop()


def body(n: int, prefix: str) -> bytes:
    requests = [
        {
            "custom_id": f"{prefix}-{i}",
            "params": {"model": "m", "max_tokens": 32, "messages": [{"role": "user", "content": f"item {i}"}]},
        }
        for i in range(n)
    ]
    return json.dumps({"requests": requests}).encode()


def call(apis: list[Proc], method: str, path: str, **kwargs: Any) -> httpx2.Response:
    """Like a client with two addresses: try the servers in random order until one answers."""
    deadline = time.monotonic() + 60
    while True:
        for api in random.sample(apis, len(apis)):
            try:
                response = httpx2.request(method, api.url + path, headers=HEADERS, timeout=30, **kwargs)
            except httpx2.TransportError:
                continue
            if response.status_code < 500:
                return response
        if time.monotonic() > deadline:
            raise AssertionError(f"no API server answered {method} {path}")
        time.sleep(0.05)


class Watcher:
    """Polls a batch and checks what a client may rely on at every step."""

    def __init__(self, apis: list[Proc], batch_id: str, total: int) -> None:
        self.apis = apis
        self.batch_id = batch_id
        self.total = total
        self.last = dict.fromkeys(TYPES, 0)
        self.polls = 0

    def poll(self) -> dict[str, Any]:
        batch = call(self.apis, "GET", f"/v1/messages/batches/{self.batch_id}").json()
        counts = batch["request_counts"]
        assert sum(counts.values()) == self.total, counts
        for kind in TYPES:
            assert counts[kind] >= self.last[kind], f"{kind} went down: {self.last} -> {counts}"
        self.last = {kind: counts[kind] for kind in TYPES}
        self.polls += 1
        return dict(batch)


def check_batch(apis: list[Proc], database: str, batch: dict[str, Any], custom_ids: set[str]) -> Counter[str]:
    """Ended, nothing processing, exactly one result per custom_id, and counts that match them."""
    assert batch["processing_status"] == "ended", batch
    counts = batch["request_counts"]
    assert counts["processing"] == 0
    response = call(apis, "GET", f"/v1/messages/batches/{batch['id']}/results")
    assert response.status_code == 200, response.text
    lines = [json.loads(line) for line in response.content.splitlines()]
    seen = Counter(line["custom_id"] for line in lines)
    assert set(seen) == custom_ids, "a request has no result"
    assert max(seen.values()) == 1, f"duplicated results: {[c for c, k in seen.items() if k > 1][:5]}"
    types = Counter(line["result"]["type"] for line in lines)
    assert {kind: types.get(kind, 0) for kind in TYPES} == {kind: counts[kind] for kind in TYPES}
    with psycopg.connect(database) as conn:
        row = conn.execute(
            "SELECT b.processing, (SELECT count(*) FROM msgbatch.jobs j WHERE j.batch = b.seq), "
            "(SELECT count(*) FROM msgbatch.results r WHERE r.id >= b.first_request "
            "AND r.id < b.first_request + b.total) FROM msgbatch.batches b WHERE b.id = %s",
            (batch["id"],),
        ).fetchone()
    assert row == (0, 0, len(custom_ids)), row
    return types


def reaped(procs: list[Proc]) -> int:
    """How many lapsed leases the processes' lifecycles handed back (from their logs)."""
    total = 0
    for proc in procs:
        for line in proc.log.read_text(errors="replace").splitlines():
            if "leases.reaped count=" in line:
                total += int(line.rsplit("=", 1)[1])
    return total


def test_workers_killed_at_random(cluster: tuple[list[Proc], list[Proc], str]) -> None:
    apis, workers, database = cluster
    rng = random.Random()
    created = call(apis, "POST", "/v1/messages/batches", content=body(N, "w"))
    assert created.status_code == 200, created.text
    watcher = Watcher(apis, created.json()["id"], N)

    # Kill a worker every 0.5-1.5 s and bring it back 0.2-1 s later, while the batch runs (for
    # at most 15 s), with at least three kills.
    chaos_until = time.monotonic() + 15
    next_kill = time.monotonic() + rng.uniform(0.5, 1.5)
    down: list[tuple[float, Proc]] = []
    kills = 0
    while True:
        batch = watcher.poll()
        now = time.monotonic()
        if batch["processing_status"] == "ended" and (kills >= 3 or now >= chaos_until):
            break
        assert now < chaos_until + 90, f"the batch did not end: {batch}"
        if now >= next_kill and now < chaos_until:
            victim = rng.choice([w for w in workers if w.alive] or workers)
            victim.kill()
            kills += 1
            down.append((now + rng.uniform(0.2, 1.0), victim))
            next_kill = now + rng.uniform(0.5, 1.5)
        for due, proc in list(down):
            if now >= due or now >= chaos_until:
                proc.start()
                down.remove((due, proc))
        time.sleep(0.05)
    for _, proc in down:
        proc.start()

    types = check_batch(apis, database, batch, {f"w-{i}" for i in range(N)})
    assert types["succeeded"] == N
    assert kills >= 3 and watcher.polls > 10
    handed_back = reaped(apis + workers)
    print(f"chaos: {kills} worker kills, {handed_back} lapsed leases reaped, {watcher.polls} polls")
    assert handed_back > 0, "no kill ever hit a leased request"


def test_api_servers_killed_while_clients_poll(cluster: tuple[list[Proc], list[Proc], str]) -> None:
    apis, workers, database = cluster
    rng = random.Random()
    created = call(apis, "POST", "/v1/messages/batches", content=body(N, "a"))
    assert created.status_code == 200, created.text
    main = created.json()["id"]
    small = call(apis, "POST", "/v1/messages/batches", content=body(3000, "s")).json()["id"]
    watchers = [Watcher(apis, main, N), Watcher(apis, small, 3000)]

    deadline = time.monotonic() + 120
    next_kill = time.monotonic() + rng.uniform(0.3, 1.0)
    kills = 0
    canceled = False
    while True:
        now = time.monotonic()
        if now >= next_kill:
            victim = rng.choice(apis)
            victim.kill()
            kills += 1
            victim.start()  # back on its port; clients meanwhile use the other one
            next_kill = now + rng.uniform(0.3, 1.0)
        states = [w.poll() for w in watchers]
        listed = call(apis, "GET", "/v1/messages/batches?limit=5").json()
        assert {main, small} <= {b["id"] for b in listed["data"]}
        if not canceled and states[1]["request_counts"]["succeeded"] > 0:
            response = call(apis, "POST", f"/v1/messages/batches/{small}/cancel")
            assert response.status_code in (200, 400), response.text  # 400: it ended first
            canceled = True
        if all(s["processing_status"] == "ended" for s in states) and kills >= 3:
            break
        assert now < deadline, f"batches did not end: {states}"
        time.sleep(0.05)
    for api in apis:
        api.wait_healthy()

    main_types = check_batch(apis, database, states[0], {f"a-{i}" for i in range(N)})
    assert main_types["succeeded"] == N
    small_types = check_batch(apis, database, states[1], {f"s-{i}" for i in range(3000)})
    assert small_types["succeeded"] + small_types["canceled"] == 3000
    assert kills >= 3 and all(w.alive for w in workers)
    print(f"chaos: {kills} API server kills, {sum(w.polls for w in watchers)} polls")
