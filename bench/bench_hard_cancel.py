"""What a cancel costs a real inference server: soft (the hosted behaviour) and hard (`abort_running`).

Runs `msgbatch serve --upstream anthropic=URL --concurrency C` against a running llama.cpp
`llama-server` (started with `--metrics` and `-np C`), creates a batch of long generations
(temperature 0, `--max-tokens` each), waits until the server generates for C of them, cancels,
and reads the upstream's own evidence: its Prometheus `/metrics` (tokens predicted, requests
processing) and, with `--log`, its log (tasks it started: `launch_slot_`; tasks it cut short).

    python bench/bench_hard_cancel.py --upstream http://127.0.0.1:8080 --log llama.log

Prints, for each mode: the requests the upstream started after the cancel, the tokens it still
generated, how long until it was idle, and how long until the batch ended.

The upstream's metrics are read every 2 s, no more: llama-server notices a closed connection only
after a full second in which no task of its own produced a result (each one restarts its wait),
and a `/metrics` call is such a task.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from msgbatch.testing import free_port, wait_until_answers

HEADERS = {"x-api-key": "bench", "content-type": "application/json"}
_RELEASED = re.compile(r"release: .*stop processing: n_tokens = (\d+)")
UPSTREAM_POLL = 2.0  # seconds between reads of the upstream's /metrics (see above)


def llama_metrics(upstream: str) -> dict[str, float]:
    found = {}
    for line in httpx.get(f"{upstream}/metrics", timeout=10).text.splitlines():
        if line.startswith("llamacpp:"):
            name, _, value = line.partition(" ")
            found[name.removeprefix("llamacpp:")] = float(value)
    return found


def log_lines(log: Path | None) -> list[str]:
    return log.read_text(errors="replace").splitlines() if log else []


def until(check: Any, timeout: float, what: str, every: float = UPSTREAM_POLL) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)
    return value


def run(mode: str, args: argparse.Namespace, log: Path | None) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "msgbatch", "serve", "--port", str(port), "--database", f"{folder}/b.db"]
        command += ["--upstream", f"anthropic={args.upstream}", "--concurrency", str(args.concurrency)]
        env = {**os.environ, "MSGBATCH_POLL_INTERVAL": "0.1"}
        server = subprocess.Popen([*command, "--log-level", "warning"], env=env)
        try:
            wait_until_answers(f"{url}/health", process=server, timeout=30)
            until(lambda: llama_metrics(args.upstream).get("requests_processing", 1) == 0, 900, "an idle upstream")
            params = {
                "model": args.model,
                "max_tokens": args.max_tokens,
                "temperature": 0,
                "messages": [{"role": "user", "content": "Tell me everything."}],
            }
            body = {"requests": [{"custom_id": f"r{i}", "params": params} for i in range(args.requests)]}
            batch = httpx.post(f"{url}/v1/messages/batches", json=body, headers=HEADERS, timeout=30).json()
            until(
                lambda: llama_metrics(args.upstream).get("requests_processing", 0) >= args.concurrency,
                60,
                "the upstream to run a full set of requests",
            )
            time.sleep(args.warmup)  # let them generate a while
            before = llama_metrics(args.upstream)
            seen_lines = len(log_lines(log))
            canceled_at = time.monotonic()
            query = {"abort_running": "true" if mode == "hard" else "false"}
            answer = httpx.post(f"{url}/v1/messages/batches/{batch['id']}/cancel", params=query, headers=HEADERS)
            answer.raise_for_status()
            idle_after = ended_after = None
            counts: dict[str, int] = {}
            next_look = canceled_at + UPSTREAM_POLL
            while idle_after is None or ended_after is None:
                now = time.monotonic() - canceled_at
                if idle_after is None and time.monotonic() >= next_look:
                    next_look += UPSTREAM_POLL
                    if llama_metrics(args.upstream).get("requests_processing", 0) == 0:
                        idle_after = now  # to within UPSTREAM_POLL seconds
                if ended_after is None:
                    state = httpx.get(f"{url}/v1/messages/batches/{batch['id']}", headers=HEADERS).json()
                    if state["processing_status"] == "ended":
                        ended_after, counts = now, state["request_counts"]
                if now > 900:
                    raise SystemExit("the batch did not end within 15 minutes of the cancel")
                time.sleep(0.05)
            after = llama_metrics(args.upstream)
            lines = log_lines(log)[seen_lines:]  # what the upstream logged from the cancel on
            result: dict[str, Any] = {
                "mode": mode,
                "upstream decode steps after the cancel": int(after["n_decode_total"] - before["n_decode_total"]),
                "upstream idle after (s, to 2 s)": round(idle_after, 1),
                "batch ended after (s)": round(ended_after, 2),
                "counts": counts,
            }
            if log is not None:
                result["requests the upstream started after the cancel"] = sum("launch_slot_" in x for x in lines)
                result["tasks it canceled"] = sum("cancel task" in x for x in lines)
                stopped = [int(m.group(1)) for x in lines if (m := _RELEASED.search(x))]
                result[f"tokens of the running requests when they stopped (of {args.max_tokens})"] = stopped
            return result
        finally:
            server.terminate()
            server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="the llama-server, e.g. http://127.0.0.1:8080")
    parser.add_argument("--log", type=Path, help="llama-server's log file (its stderr), for the tasks it started")
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4, help="match llama-server's -np")
    parser.add_argument("--max-tokens", type=int, default=3000)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of generation before the cancel")
    parser.add_argument("--modes", default="soft,hard")
    args = parser.parse_args()
    for mode in args.modes.split(","):
        result = run(mode, args, args.log)
        print(" | ".join(f"{key}: {value}" for key, value in result.items()), flush=True)


if __name__ == "__main__":
    main()
