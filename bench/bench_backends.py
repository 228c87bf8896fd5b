"""Throughput of the HTTP backends against a fake upstream with a fixed latency.

With latency L and concurrency C, no client can beat C / L requests per second; this reports how
close msgbatch gets (`ratio to ideal`) and, side by side in one run against the same upstream,
what the obvious alternative gets: a client-side loop of `AsyncAnthropic().messages.create` calls
under an `asyncio.Semaphore(C)`.

    python bench/bench_backends.py                      # L = 100 ms, C = 128, 20,000 requests
    python bench/bench_backends.py --latency 0.05 --concurrency 64 --requests 5000

Every server runs in its own process: the fake upstream (`tests/fake_upstream.py`), and
`msgbatch serve --upstream anthropic=...` / `openai=...` on a fresh SQLite file. The batch is
created through the SDK and timed from create to `ended`, so storing, claiming, running,
recording and counting are all inside the figure (so are the fixed costs of creating and of
noticing the end, which is why a run should last several seconds). The SDK loop runs in this
process, on uvloop like `msgbatch serve`, with a pool of C connections; it has no fixed costs,
so it runs fewer requests (`--sdk-requests`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx2

from msgbatch.testing import free_port, wait_until_answers

ROOT = Path(__file__).resolve().parent.parent
MODEL = "bench-model"


def params(i: int, max_tokens: int = 16) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": max_tokens, "messages": [{"role": "user", "content": f"Request {i}"}]}


def run_msgbatch(kind: str, upstream: str, n: int, concurrency: int, workdir: Path) -> float:
    """Requests per second through `msgbatch serve --upstream kind=...`, create to ended."""
    port = free_port()
    url = upstream if kind == "anthropic" else upstream + "/v1"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [
        sys.executable, "-m", "msgbatch", "serve", "--port", str(port),
        "--database", str(workdir / f"bench-{kind}.db"), "--upstream", f"{kind}={url}",
        "--concurrency", str(concurrency), "--log-level", "warning",
    ]  # fmt: skip
    log = open(workdir / f"serve-{kind}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_answers(base + "/health", process=proc)
        client = anthropic.Anthropic(api_key="bench", base_url=base, max_retries=0, timeout=300)
        # The body is encoded before the clock starts: what the SDK spends building it is the
        # client's time, not msgbatch's. Storing it, and everything after, is timed.
        body = json.dumps({"requests": [{"custom_id": f"r{i}", "params": params(i)} for i in range(n)]})
        start = time.perf_counter()
        created = httpx2.post(
            base + "/v1/messages/batches",
            content=body,
            headers={"x-api-key": "bench", "content-type": "application/json"},
            timeout=300,
        )
        batch = client.messages.batches.retrieve(created.json()["id"])
        while batch.processing_status != "ended":
            time.sleep(0.02)
            batch = client.messages.batches.retrieve(batch.id)
        elapsed = time.perf_counter() - start
        counts = batch.request_counts
        if counts.succeeded != n:
            raise RuntimeError(f"msgbatch ({kind}): {counts}")
        client.close()
        return n / elapsed
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


async def run_sdk_loop(upstream: str, n: int, concurrency: int) -> float:
    """Requests per second of AsyncAnthropic().messages.create under a Semaphore(C)."""
    client = anthropic.AsyncAnthropic(api_key="bench", base_url=upstream, max_retries=0, timeout=300)
    # The SDK's default pool (httpx2 defaults) caps connections below 128; give it C of them.
    http_client = httpx2.AsyncClient(
        base_url=upstream,
        limits=httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        timeout=300,
    )
    client = client.with_options(http_client=http_client)
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with semaphore:
            await client.messages.create(**params(i))

    await one(-1)  # warm up the connection
    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - start
    await client.close()
    await http_client.aclose()
    return n / elapsed


def sdk_loop(upstream: str, n: int, concurrency: int) -> float:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_sdk_loop(upstream, n, concurrency))
    return uvloop.run(run_sdk_loop(upstream, n, concurrency))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.1, help="upstream latency L in seconds")
    parser.add_argument("--concurrency", type=int, default=128, help="concurrency C")
    parser.add_argument("--requests", type=int, default=20_000, help="requests per msgbatch run")
    parser.add_argument("--sdk-requests", type=int, default=4_000, help="requests per SDK loop run")
    parser.add_argument("--runs", type=int, default=1, help="repeat and report the median")
    args = parser.parse_args()
    ideal = args.concurrency / args.latency

    port = free_port()
    fake = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fake_upstream.py"), "--port", str(port), "--latency", str(args.latency)],
        stdout=subprocess.DEVNULL,
    )
    upstream = f"http://127.0.0.1:{port}"
    figures: dict[str, list[float]] = {"msgbatch anthropic": [], "msgbatch openai": [], "SDK loop": []}
    try:
        wait_until_answers(upstream + "/", process=fake, status=None)
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.runs):
                figures["msgbatch anthropic"].append(
                    run_msgbatch("anthropic", upstream, args.requests, args.concurrency, Path(tmp))
                )
                figures["msgbatch openai"].append(
                    run_msgbatch("openai", upstream, args.requests, args.concurrency, Path(tmp))
                )
                figures["SDK loop"].append(sdk_loop(upstream, args.sdk_requests, args.concurrency))
    finally:
        fake.terminate()
        fake.wait(10)

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    sdk = median(figures["SDK loop"])
    print(
        f"\nL = {args.latency * 1000:g} ms, C = {args.concurrency}, {args.requests:,} requests per batch "
        f"({args.sdk_requests:,} for the SDK loop), "
        f"ideal C/L = {ideal:,.0f} req/s, {args.runs} run(s), median\n"
    )
    print("| client | req/s | ratio to ideal | vs SDK loop |")
    print("|---|---|---|---|")
    for name, values in figures.items():
        rate = median(values)
        print(f"| {name} | {rate:,.0f} | {rate / ideal:.3f} | {rate / sdk:.3f} |")


if __name__ == "__main__":
    main()
