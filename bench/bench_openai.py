"""The OpenAI Batch API under load: an OpenAI-format batch against a fixed-latency fake
`/v1/chat/completions` upstream, and the upload of a 200 MB input file.

With latency L and concurrency C no client can beat C / L lines per second; this reports how
close `msgbatch serve --upstream openai=... --concurrency C` gets (`ratio`) and the CPU time the
server spends per line (user + system, from /proc, from the create call to the batch's end:
checking and storing the lines, claiming, calling the upstream, recording results, answering the
polls). Then, on a fresh `serve --no-worker`, a ~200 MB file is uploaded through the SDK (timed,
with the server's peak RSS), and a batch is created from it (the 50,000 lines checked and stored).

    python bench/bench_openai.py                         # L = 100 ms, C = 64 and 256
    python bench/bench_openai.py --concurrency 64 --lines 5000 --upload-mb 0

Every server runs in its own process: the fake upstream (`tests/fake_upstream.py`) and each
`msgbatch serve` on a fresh SQLite file. The machine's load average is printed with the figures:
compare runs only at similar loads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai

from msgbatch.testing import free_port, wait_until_answers

ROOT = Path(__file__).resolve().parent.parent
CHAT = "/v1/chat/completions"
MIB = 1024 * 1024
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def line(i: int, text: str) -> bytes:
    body = {"model": "bench-model", "max_tokens": 16, "messages": [{"role": "user", "content": text}]}
    return json.dumps({"custom_id": f"request-{i}", "method": "POST", "url": CHAT, "body": body}).encode() + b"\n"


def serve(workdir: Path, name: str, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [
        sys.executable, "-m", "msgbatch", "serve", "--port", str(port), "--database", str(workdir / f"{name}.db"),
        "--log-level", "warning", *args,
    ]  # fmt: skip
    log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    wait_until_answers(base + "/health", process=proc)
    return proc, base


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(30)


def run_batch(upstream: str, concurrency: int, latency: float, n: int, workdir: Path) -> dict[str, float]:
    proc, base = serve(
        workdir, f"batch-{concurrency}", "--upstream", f"openai={upstream}/v1", "--concurrency", str(concurrency)
    )
    try:
        client = openai.OpenAI(api_key="bench", base_url=base + "/v1", max_retries=0, timeout=600)
        content = b"".join(line(i, f"Question number {i}") for i in range(n))
        uploaded = client.files.create(file=("bench.jsonl", content), purpose="batch")
        cpu_before = cpu_seconds(proc.pid)
        start = time.perf_counter()
        batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        while batch.status not in ("completed", "failed", "cancelled", "expired"):
            time.sleep(0.02)
            batch = client.batches.retrieve(batch.id)
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(proc.pid) - cpu_before
        counts = batch.request_counts
        if batch.status != "completed" or counts is None or counts.completed != n:
            raise RuntimeError(f"the batch did not complete: {batch}")
        assert batch.output_file_id is not None
        lines = client.files.content(batch.output_file_id).content.count(b"\n")
        if lines != n:
            raise RuntimeError(f"the output file has {lines} lines, not {n}")
        client.close()
        rate = n / elapsed
        return {
            "lines": n,
            "seconds": elapsed,
            "rate": rate,
            "ratio": rate / (concurrency / latency),
            "cpu_ms": 1000 * cpu / n,
        }
    finally:
        stop(proc)


def run_upload(megabytes: int, workdir: Path) -> dict[str, float]:
    n = min(50_000, max(100, megabytes * 1_000_000 // 4000))  # lines of about 4 KB, 50,000 at most
    per_line = megabytes * 1_000_000 // n
    path = workdir / "upload.jsonl"
    with path.open("wb") as out:
        for i in range(n):
            head = line(i, "")
            out.write(line(i, "x" * max(0, per_line - len(head))))
    size = path.stat().st_size
    proc, base = serve(workdir, "upload", "--no-worker")
    try:
        client = openai.OpenAI(api_key="bench", base_url=base + "/v1", max_retries=0, timeout=600)
        rss_idle = peak_rss_mib(proc.pid)
        with path.open("rb") as source:
            start = time.perf_counter()
            uploaded = client.files.create(file=source, purpose="batch")
            upload_seconds = time.perf_counter() - start
        rss_upload = peak_rss_mib(proc.pid)
        start = time.perf_counter()
        batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        create_seconds = time.perf_counter() - start
        if batch.status != "in_progress" or batch.request_counts is None or batch.request_counts.total != n:
            raise RuntimeError(f"the batch was not created: {batch}")
        client.close()
        return {
            "lines": n,
            "bytes": size,
            "upload_seconds": upload_seconds,
            "rss_idle": rss_idle,
            "rss_upload": rss_upload,
            "create_seconds": create_seconds,
            "rss_create": peak_rss_mib(proc.pid),
        }
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.1, help="upstream latency L in seconds")
    parser.add_argument("--concurrency", type=int, action="append", help="concurrency C (repeatable) [64, 256]")
    parser.add_argument("--lines", type=int, default=0, help="lines per batch [about 20 s of ideal work, <= 50,000]")
    parser.add_argument("--upload-mb", type=int, default=200, help="size of the uploaded file in MB (0: skip)")
    args = parser.parse_args()
    concurrencies = args.concurrency or [64, 256]
    load = os.getloadavg()

    port = free_port()
    fake = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fake_upstream.py"), "--port", str(port), "--latency", str(args.latency)],
        stdout=subprocess.DEVNULL,
    )
    upstream = f"http://127.0.0.1:{port}"
    results = {}
    try:
        wait_until_answers(upstream + "/", process=fake, status=None)
        with tempfile.TemporaryDirectory() as tmp:
            for c in concurrencies:
                n = args.lines or min(50_000, int(20 * c / args.latency))
                print(f"batch of {n:,} lines at C = {c} ...", file=sys.stderr)
                results[c] = run_batch(upstream, c, args.latency, n, Path(tmp))
            upload = None
            if args.upload_mb:
                print(f"upload of {args.upload_mb} MB ...", file=sys.stderr)
                upload = run_upload(args.upload_mb, Path(tmp))
    finally:
        fake.terminate()
        fake.wait(10)

    print(f"\nL = {args.latency * 1000:g} ms; load average at the start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print("| C (ideal C/L) | lines | lines/s | ratio to C/L | msgbatch CPU per line |")
    print("|---|---|---|---|---|")
    for c, r in results.items():
        print(
            f"| {c} ({c / args.latency:,.0f}/s) | {r['lines']:,.0f} | {r['rate']:,.0f} | {r['ratio']:.2f} | "
            f"{r['cpu_ms']:.2f} ms |"
        )
    if upload:
        print(
            f"\nUpload of {upload['bytes'] / 1e6:,.0f} MB: {upload['upload_seconds']:.2f} s "
            f"({upload['bytes'] / 1e6 / upload['upload_seconds']:,.0f} MB/s); server peak RSS "
            f"{upload['rss_idle']:.0f} MiB before, {upload['rss_upload']:.0f} MiB after the upload; "
            f"a batch created from it ({upload['lines']:,.0f} lines checked and stored) "
            f"in {upload['create_seconds']:.2f} s, "
            f"peak RSS then {upload['rss_create']:.0f} MiB."
        )


if __name__ == "__main__":
    main()
