"""PostgreSQL going away mid-batch, on a private cluster this test starts (initdb, a port of its own).

An API server (`serve --no-worker`) and a worker run a batch; the database stops for 20 s. While it
is down, API calls answer 503 within the bound (`database_timeout`) and `/ready` within a second;
once it accepts connections again, calls succeed within 2 s and the batch finishes with exactly
one result per custom_id. Each process logs one WARNING when the database goes and one INFO when
it is back, and no traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx2
import psycopg
import pytest

from msgbatch.testing import free_port, wait_until_answers

OUTAGE = float(os.environ.get("MSGBATCH_TEST_DB_OUTAGE_SECONDS", "20"))
TIMEOUT = 2.0  # database_timeout given to the processes


def _pg_bin() -> Path | None:
    root = Path("/usr/lib/postgresql")
    found = sorted(root.glob("*/bin/initdb")) if root.exists() else []
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PrivateCluster:
    """A PostgreSQL server of the test's own, run as the `postgres` user when the test is root."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="msgbatch-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.dir, "postgres")

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"), "-w", "start"
        )

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def accepts_connections(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=1):
                return True
        except psycopg.Error:
            return False

    def remove(self) -> None:
        subprocess.run(
            [*self._as, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    bin_dir = _pg_bin()
    if bin_dir is None or (os.geteuid() == 0 and shutil.which("runuser") is None):
        reason = "PostgreSQL's server binaries (initdb, pg_ctl) are not installed"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    pg = PrivateCluster(bin_dir)
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        pg.remove()


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "msgbatch", *args], stdout=out, stderr=subprocess.STDOUT, env=env
        )


def test_the_database_stops_for_20s_mid_batch(tmp_path: Path, cluster: PrivateCluster) -> None:
    env = {**os.environ, "MSGBATCH_DATABASE": cluster.url, "MSGBATCH_DATABASE_TIMEOUT": str(TIMEOUT)}
    env.pop("MSGBATCH_CONFIG", None)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    subprocess.run([sys.executable, "-m", "msgbatch", "migrate"], env=env, check=True, capture_output=True)
    api_log, worker_log = tmp_path / "api.log", tmp_path / "worker.log"
    api = _start(["serve", "--no-worker", "--port", str(port)], api_log, env)
    worker = _start(["worker", "--concurrency", "16", "--simulate-latency", "0.05"], worker_log, env)
    client = anthropic.Anthropic(base_url=base, api_key="k", max_retries=0, _strict_response_validation=True)
    try:
        wait_until_answers(f"{base}/health", process=api)
        n = 1200  # about 4 s of work at 16 x 0.05 s
        requests = [
            {
                "custom_id": f"r{i}",
                "params": {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": f"q{i}"}]},
            }
            for i in range(n)
        ]
        batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        deadline = time.monotonic() + 30
        while client.messages.batches.retrieve(batch.id).request_counts.succeeded < 100:
            assert time.monotonic() < deadline
            time.sleep(0.05)

        cluster.stop()
        stopped = time.monotonic()
        slowest_call = slowest_ready = 0.0
        while time.monotonic() - stopped < OUTAGE:
            started = time.monotonic()
            with pytest.raises(anthropic.APIStatusError) as refused:
                client.messages.batches.retrieve(batch.id)
            slowest_call = max(slowest_call, time.monotonic() - started)
            assert refused.value.status_code == 503
            assert refused.value.response.headers.get("retry-after")
            body = refused.value.response.json()
            assert body["type"] == "error" and body["error"]["type"] in ("overloaded_error", "api_error")
            started = time.monotonic()
            ready = httpx2.get(f"{base}/ready", timeout=5)
            slowest_ready = max(slowest_ready, time.monotonic() - started)
            assert ready.status_code == 503
            time.sleep(0.5)
        assert slowest_call <= TIMEOUT + 1.0, slowest_call
        assert slowest_ready < 1.0, slowest_ready

        cluster.start()
        while not cluster.accepts_connections():
            time.sleep(0.05)
        back = time.monotonic()
        while True:
            try:
                mid = client.messages.batches.retrieve(batch.id)
                break
            except anthropic.APIStatusError:
                assert time.monotonic() - back < 2.0, "the API server did not recover within 2 s"
                time.sleep(0.05)
        api_recovered = time.monotonic() - back
        # The worker too: the rest of the batch runs at its pace from there.
        remaining = mid.request_counts.processing
        budget = 2.0 + remaining * 0.05 / 16 * 1.5 + 3.0
        while client.messages.batches.retrieve(batch.id).processing_status != "ended":
            assert time.monotonic() - back < budget, f"the batch did not finish within {budget:.1f}s of recovery"
            time.sleep(0.1)
        final = client.messages.batches.retrieve(batch.id)
        assert final.request_counts.succeeded == n, final.request_counts
        ids = [r.custom_id for r in client.messages.batches.results(batch.id)]
        assert sorted(ids) == sorted(f"r{i}" for i in range(n))  # each exactly once
        assert api_recovered < 2.0
    finally:
        client.close()
        for proc in (api, worker):
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    for log in (api_log, worker_log):
        text = log.read_text()
        assert text.count("database.unavailable") == 1, text[-3000:]
        assert text.count("database.back") == 1, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
