"""Acceptance: the official TypeScript SDK (`@anthropic-ai/sdk`, pinned in tests/acceptance/ts_sdk/package.json
and its lock) runs create, retrieve, list, cancel, delete and results, standard and beta, against a
real `msgbatch serve --strict-batch-params`.

The SDK is installed with `npm ci` into tests/acceptance/ts_sdk/node_modules/ (ignored by git) when it is
missing or not the locked version. Without node and npm the test skips saying why, unless `CI` is
set: then it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from anthropic.types.beta.messages import BetaMessageBatchIndividualResponse
from anthropic.types.messages import MessageBatchIndividualResponse

from conftest import ServeProcess

TS_DIR = Path(__file__).parent / "ts_sdk"
SDK = "@anthropic-ai/sdk"
SCHEMA = {  # as in batches.mjs
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer", "minimum": 0}},
    "required": ["city", "population"],
    "additionalProperties": False,
}


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _locked_version() -> str:
    lock = json.loads((TS_DIR / "package-lock.json").read_text())
    return str(lock["packages"][f"node_modules/{SDK}"]["version"])


def ts_sdk() -> str:
    """The node binary, with the locked SDK installed beside the script."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("the TypeScript SDK test needs node and npm (Node.js 20 or newer) on PATH")
    assert node is not None and npm is not None
    installed = TS_DIR / "node_modules" / SDK / "package.json"
    if not installed.exists() or json.loads(installed.read_text())["version"] != _locked_version():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=TS_DIR,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            _unavailable(f"npm ci could not install {SDK} into {TS_DIR}/node_modules: {done.stderr.strip()[-500:]}")
    return node


def test_typescript_sdk_against_msgbatch_serve(serve_process: Callable[..., ServeProcess]) -> None:
    node = ts_sdk()
    proc = serve_process("--strict-batch-params", "--concurrency", "2")
    done = subprocess.run(
        [node, "batches.mjs"],
        cwd=TS_DIR,
        env={**os.environ, "MSGBATCH_URL": proc.base_url, "MSGBATCH_KEY": "sk-ts-test"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)

    created, ended = out["created"], out["ended"]
    assert created["type"] == "message_batch" and created["processing_status"] == "in_progress"
    assert ended["processing_status"] == "ended" and ended["request_counts"]["succeeded"] == 3
    assert ended["results_url"] == f"{proc.base_url}/v1/messages/batches/{created['id']}/results"
    results = {r["custom_id"]: MessageBatchIndividualResponse.model_validate(r, strict=True) for r in out["results"]}
    assert sorted(results) == ["plain", "structured", "system"]
    assert all(r.result.type == "succeeded" for r in results.values())
    structured = results["structured"].result
    assert structured.type == "succeeded" and structured.message.content[0].type == "text"
    jsonschema.validate(json.loads(structured.message.content[0].text), SCHEMA)

    slow_id = out["canceled"]["id"]
    assert out["listed"][:2] == [slow_id, created["id"]]  # newest first, across pages of two
    assert out["canceled"]["processing_status"] in ("canceling", "ended")
    assert out["canceled"]["cancel_initiated_at"] is not None
    counts = out["canceledEnded"]["request_counts"]
    assert counts["canceled"] >= 1 and counts["succeeded"] + counts["canceled"] == 6
    assert sorted(r["result"]["type"] for r in out["canceledResults"]).count("canceled") == counts["canceled"]

    assert out["deleted"] == {"id": created["id"], "type": "message_batch_deleted"}
    assert out["retrieveDeleted"] == {"name": "NotFoundError", "status": 404, "type": "not_found_error"}

    beta = {
        r["custom_id"]: BetaMessageBatchIndividualResponse.model_validate(r, strict=True) for r in out["betaResults"]
    }
    assert beta["clear-at"].result.type == "succeeded"
    fast = beta["fast"].result  # refused as the hosted API does, under --strict-batch-params
    assert fast.type == "errored" and fast.error.error.type == "invalid_request_error"
    assert fast.error.error.message == "speed: fast mode is not supported in the Message Batches API"
    assert out["betaEnded"]["id"] in out["betaListed"]
