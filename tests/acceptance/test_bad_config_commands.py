"""The commands refuse a bad configuration before they bind a port or open a database: real
`msgbatch serve`, `worker` and `migrate` processes, their exit status and what they print."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from msgbatch.testing import free_port

# Short-lived processes of their own: these run beside the other tests, not one at a time.
pytestmark = pytest.mark.alongside

# -- the commands refuse a bad configuration before they bind a port or open a database ----------


def run_msgbatch(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MSGBATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "msgbatch", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**clean, **(env or {})},
    )


def assert_port_free(port: int) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@pytest.mark.parametrize("command", ["serve", "worker", "migrate"])
def test_commands_exit_on_an_unknown_key_before_binding_or_opening(tmp_path: Path, command: str) -> None:
    config = tmp_path / "msgbatch.toml"
    config.write_text("prot = 8788\n")
    port = free_port()
    args = [command, "--config", str(config), "--database", str(tmp_path / "never.db")]
    if command == "serve":
        args += ["--port", str(port)]
    result = run_msgbatch(tmp_path, *args)
    assert result.returncode == 2, result
    assert f"Error: {config}: prot: unknown key (did you mean port?)" in result.stderr
    assert "Traceback" not in result.stderr and "listening" not in result.stderr
    assert not (tmp_path / "never.db").exists() and not (tmp_path / "msgbatch.db").exists()
    assert_port_free(port)


def test_serve_exits_on_an_api_key_without_a_workspace(tmp_path: Path) -> None:
    port = free_port()
    result = run_msgbatch(
        tmp_path, "serve", "--port", str(port), env={"MSGBATCH_API_KEYS": "sk-live-secret=team,sk-other-secret"}
    )
    assert result.returncode == 2, result
    assert re.search(r"Error: MSGBATCH_API_KEYS: entry 2 is not KEY=WORKSPACE", result.stderr), result.stderr
    assert "secret" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "msgbatch.db").exists()
    assert_port_free(port)


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_commands_exit_on_a_backend_error_found_when_building_it(tmp_path: Path, command: str) -> None:
    """Errors only the backend can find (its URL, its key's env var) also come before the port."""
    config = tmp_path / "msgbatch.toml"
    config.write_text("[[backends]]\nname = 'gpu'\ntype = 'openai'\nurl = 'http://h'\napi_key_env = 'NOPE_NOT_SET'\n")
    port = free_port()
    args = ["--port", str(port)] if command == "serve" else []
    result = run_msgbatch(tmp_path, command, "--config", str(config), *args)
    assert result.returncode == 2, result
    assert "backends.gpu.api_key_env: environment variable NOPE_NOT_SET is not set" in result.stderr
    assert "Traceback" not in result.stderr
    assert_port_free(port)
