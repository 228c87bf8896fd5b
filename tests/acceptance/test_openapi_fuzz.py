"""schemathesis against a real `msgbatch serve`: every operation of /openapi.json, valid and invalid input.

The schemathesis command runs all its phases (examples, coverage of boundary values and
unsupported methods, random fuzzing, stateful create -> retrieve/cancel/results/delete chains)
with every check on: no 5xx, statuses, content types, headers and bodies exactly as documented,
auth enforced, invalid input refused, 405 with `Allow`, a deleted batch gone. The rules JSON
Schema cannot express are in tests/acceptance/schemathesis.toml and tests/acceptance/fuzz_hooks.py.

Bounded and repeatable: a fixed seed and `MSGBATCH_FUZZ_EXAMPLES` examples per operation and
phase (default 40: over 2,000 cases in about 20 s). `MSGBATCH_FUZZ_SEED=random` (or any number)
explores other cases.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx2

from conftest import ServeProcess
from msgbatch.api import openapi

KEY = "sk-fuzz"
TESTS = Path(__file__).parent


def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    examples = os.environ.get("MSGBATCH_FUZZ_EXAMPLES", "40")
    seed = os.environ.get("MSGBATCH_FUZZ_SEED", "20261130")
    # Real keys, so that schemathesis can see that a wrong or missing key is refused.
    server = ServeProcess(tmp_path, env={"MSGBATCH_API_KEYS": f"{KEY}=fuzz"}).start()
    try:
        served = httpx2.get(f"{server.base_url}/openapi.json", timeout=10).json()
        assert served == openapi.document() and served["openapi"] == "3.1.0"
        cmd = [
            sys.executable, "-m", "schemathesis.cli", "--no-color", "--config-file", str(TESTS / "schemathesis.toml"),
            "run", f"{server.base_url}/openapi.json", "--header", f"x-api-key: {KEY}",
            "--max-examples", examples, "--workers", "1",
        ]  # fmt: skip
        if seed != "random":
            cmd += ["--seed", seed]
        env = {**os.environ, "PYTHONPATH": str(TESTS)}
        run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    finally:
        server.stop()
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-15000:]
    generated = re.search(r"(\d+) generated", output)
    assert generated and int(generated.group(1)) >= 1000, output[-3000:]
    # Nothing the fuzzer sent was a bug to the server either: no traceback, no unhandled error.
    log = server.log.read_text()
    assert "Traceback" not in log and "api.unhandled" not in log, log[-5000:]
