"""bench/bench_core.py --quick runs end to end against real servers and prints its table.

No timing is asserted: this only keeps the benchmark working as the code changes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_core.py"


def test_bench_core_quick(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    work = tmp_path / "work"  # the bench's temporary directory goes here (TMPDIR)
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(out_json)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(work)},
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    out = proc.stdout

    assert "| Measurement | Result | Target |" in out
    assert "Machine: nproc" in out and "SQLite" in out and "Python" in out
    # 1. create, both body sizes, with the server's peak RSS
    assert len(re.findall(r"^\| Create, 2,000 requests, .* \| [\d.]+ s ", out, re.M)) == 2, out
    assert len(re.findall(r"^\| Server peak RSS .* \| [\d,]+ MiB", out, re.M)) == 2, out
    # 2. end to end
    assert re.search(r"^\| End-to-end, 2,000 requests, .* \| [\d,]+ req/s", out, re.M), out
    # 3. results: every line came back
    assert re.search(r"^\| Results download .* \| [\d,]+ MB/s \(.*2,000 lines", out, re.M), out
    # 4. retrieve latency under load
    assert re.search(r"^\| Retrieve latency while .* \| p50 [\d.]+ ms / p99 [\d.]+ ms", out, re.M), out
    assert "Problems:" not in out

    data = json.loads(out_json.read_text())
    assert data["results_lines"] == 2000
    assert data["e2e_counts"]["succeeded"] == 2000
    assert [c["label"] for c in data["creates"]] == ["small", "big"]
    # The bench removed its temporary directory (databases, server logs).
    assert not list(work.iterdir())


def test_bench_openai_small(tmp_path: Path) -> None:
    """bench/bench_openai.py on a small batch and upload: it runs and prints its figures."""
    bench = BENCH.parent / "bench_openai.py"
    args = ["--concurrency", "16", "--lines", "300", "--latency", "0.02", "--upload-mb", "2"]
    proc = subprocess.run(
        [sys.executable, str(bench), *args], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert re.search(r"^\| 16 \(800/s\) \| 300 \| [\d,]+ \| [\d.]+ \| [\d.]+ ms \|$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^Upload of 2 MB: [\d.]+ s .* peak RSS", proc.stdout, re.M), proc.stdout
