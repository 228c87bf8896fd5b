#!/usr/bin/env python
"""Retrieve latency while 2,000 slow clients hold connections to `msgbatch serve`.

    .venv/bin/python bench/bench_slow_clients.py                 # 2,000 slow connections, 30 s (~1 min)
    .venv/bin/python bench/bench_slow_clients.py --connections 500 --seconds 10

A `msgbatch serve` (defaults: header_timeout 10 s, body_timeout 30 s, SQLite, the simulator) and,
in a separate process, an attacker that keeps `--connections` connections open at all times,
reopening each one the server closes:

- half send a request line and then one header byte per second, never finishing the head
  (the server answers 408 after `header_timeout` and closes);
- half send a create with a valid key that declares a 1,000,000-byte body, send 14 bytes of it,
  then one byte every 5 s (the server answers 408 when a 30 s wait passes, or 429 when the
  create-memory budget has no room for the declared size within 10 s).

Meanwhile this process retrieves a batch over one keep-alive connection, back to back with a
10 ms pause, and reports p50/p99/max of the calls made while all the slow connections were open,
next to the same measurement on the idle server before. The attacker reports what the server
answered it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import resource
import sys
import tempfile
import time
from collections import Counter
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import httpx

from bench_core import Server, loadavg, machine_line, percentile, stop_all_servers

KEY = "bench"


async def _hold(port: int, head: bytes, trickle: float, counts: Counter[str], open_now: Synchronized[int]) -> None:
    """One slow connection: send `head`, then a byte every `trickle` s until the server answers or closes."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        counts["connect failed"] += 1
        await asyncio.sleep(0.5)
        return
    with open_now.get_lock():
        open_now.value += 1
    try:
        writer.write(head)
        while True:
            try:
                answer = await asyncio.wait_for(reader.read(200), trickle)
            except TimeoutError:
                writer.write(b"a")
                continue
            counts[answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/1.1 ") else "closed, no answer"] += 1
            return
    except OSError:
        counts["reset"] += 1
    finally:
        with open_now.get_lock():
            open_now.value -= 1
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _attack(port: int, connections: int, stop_at: float, open_now: Synchronized[int]) -> Counter[str]:
    slow_head = b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: "
    slow_body = (
        f"POST /v1/messages/batches HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-key: {KEY}\r\n"
        "content-type: application/json\r\ncontent-length: 1000000\r\n\r\n"
    ).encode() + b'{"requests": ['
    counts: Counter[str] = Counter()

    async def keep(head: bytes, trickle: float) -> None:
        while time.monotonic() < stop_at:
            await _hold(port, head, trickle, counts, open_now)

    tasks = [
        asyncio.create_task(keep(slow_head if i % 2 else slow_body, 1.0 if i % 2 else 5.0)) for i in range(connections)
    ]
    await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return counts


def attacker(
    port: int, connections: int, stop_at: float, open_now: Synchronized[int], out: multiprocessing.Queue[str]
) -> None:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        counts = runner.run(_attack(port, connections, stop_at, open_now))
    out.put(json.dumps(counts))


def retrieve_latencies(client: httpx.Client, url: str, seconds: float) -> list[float]:
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        resp = client.get(url)
        latencies.append((time.perf_counter() - t0) * 1000)
        if resp.status_code != 200:
            raise RuntimeError(f"retrieve answered {resp.status_code}: {resp.text[:300]}")
        time.sleep(0.01)
    return latencies


def summary(latencies: list[float]) -> str:
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    return f"{len(latencies):,} calls: p50 {p50:.1f} ms, p99 **{p99:.1f} ms**, max {max(latencies):.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to measure under attack")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.connections * 2 + 200  # the attacker's sockets and the server's (a child inherits this)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    print(f"load average at start: {loadavg()}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="msgbatch-bench-slow-") as tmp:
        srv = Server(Path(tmp), "slow", worker=True).start()
        try:
            with httpx.Client(headers={"x-api-key": KEY}, timeout=30) as client:
                made = client.post(
                    f"{srv.base_url}/v1/messages/batches",
                    json={"requests": [{"custom_id": "a", "params": {"model": "m", "max_tokens": 8, "messages": []}}]},
                )
                url = f"{srv.base_url}/v1/messages/batches/{made.json()['id']}"
                retrieve_latencies(client, url, 2)  # warm up
                idle = retrieve_latencies(client, url, 10)
                print(f"idle: {summary(idle)}", file=sys.stderr)
                open_now: Synchronized[int] = multiprocessing.Value("i", 0)  # type: ignore[assignment]
                out: multiprocessing.Queue[str] = multiprocessing.Queue()
                ramp = 30.0
                stop_at = time.monotonic() + ramp + args.seconds + 1
                proc = multiprocessing.Process(
                    target=attacker, args=(srv.port, args.connections, stop_at, open_now, out)
                )
                proc.start()
                deadline = time.monotonic() + ramp
                while open_now.value < args.connections * 0.98 and time.monotonic() < deadline:
                    time.sleep(0.1)
                print(f"{open_now.value} slow connections open", file=sys.stderr)
                rss_before = srv.proc_status_kib("VmRSS")
                cpu_before = srv.cpu_seconds()
                loaded = retrieve_latencies(client, url, args.seconds)
                cpu = srv.cpu_seconds() - cpu_before
                rss = srv.proc_status_kib("VmRSS")
                still_open = open_now.value
                proc.join(120)
                counts = json.loads(out.get(timeout=30))
        finally:
            srv.stop()
            stop_all_servers()
    print(f"\n{args.connections:,} slow connections against `msgbatch serve` (defaults), {machine_line()}.")
    print(f"Load average at the end: {loadavg()}.\n")
    print("| retrieve, one keep-alive connection, 10 ms apart | latency |")
    print("|---|---|")
    print(f"| idle server | {summary(idle)} |")
    print(f"| {still_open:,} slow connections open (of {args.connections:,}) | {summary(loaded)} |")
    print(
        f"\nServer during the attack: {cpu / args.seconds * 100:.0f}% of a core, RSS {rss_before / 1024:.0f} -> "
        f"{rss / 1024:.0f} MiB. What the slow clients got: "
        + ", ".join(f"{n:,} x {what}" for what, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
