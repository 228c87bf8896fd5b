"""For tests and benchmarks that run servers: a free port, waiting until a server answers, and a
scratch PostgreSQL database.

No test framework and no HTTP client, so that `bench/` scripts and the test suite share it.
"""

from __future__ import annotations

import http.client
import random
import socket
import subprocess
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

__all__ = ["ScratchDatabase", "ServerDidNotAnswer", "free_port", "wait_until_answers"]


# Below the kernel's ephemeral range: a port from that range can be taken, between this pick and
# the server's bind, by the local end of any outgoing connection (to a database, to another server).
_LOWEST_PORT = 10_000


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now, outside the range the OS hands out to outgoing
    connections (another process may still bind it first: unlikely, not impossible)."""
    low = _ephemeral_low()
    if low - _LOWEST_PORT >= 1_000:
        for _ in range(50):
            port = random.randrange(_LOWEST_PORT, low)
            with socket.socket() as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue  # taken: try another
                return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ServerDidNotAnswer(RuntimeError):
    """The server exited, or did not answer in time; the message says which."""


def wait_until_answers(
    url: str,
    *,
    process: subprocess.Popen[Any] | threading.Thread | None = None,
    timeout: float = 30.0,
    status: int | None = 200,
    interval: float = 0.05,
) -> None:
    """Poll `GET url` until it answers `status` (any status when None). Give the server's
    `process` (or thread) to fail as soon as it exits rather than at the deadline.

    Uses `http.client` directly: no proxy from the environment gets in the way of a loopback URL.
    """
    parts = urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        if isinstance(process, subprocess.Popen) and process.poll() is not None:
            raise ServerDidNotAnswer(f"{url}: the server exited with status {process.returncode}")
        if isinstance(process, threading.Thread) and not process.is_alive():
            raise ServerDidNotAnswer(f"{url}: the server's thread ended")
        connection = connection_class(parts.hostname or "127.0.0.1", parts.port, timeout=1.0)
        try:
            connection.request("GET", target)
            response = connection.getresponse()
            response.read()
            if status is None or response.status == status:
                return
            last = f"it answered {response.status}"
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        finally:
            connection.close()
        if time.monotonic() > deadline:
            raise ServerDidNotAnswer(f"{url} did not answer {status or 'at all'} within {timeout:g}s ({last})")
        time.sleep(interval)


class ScratchDatabase:
    """A database of its own on the PostgreSQL server of `admin_url` (a user who may create
    databases): made on entering, dropped with whatever is still connected to it on leaving."""

    def __init__(self, admin_url: str, prefix: str = "msgbatch_bench") -> None:
        self.admin_url = admin_url
        self.name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.url = urlunsplit(urlsplit(admin_url)._replace(path="/" + self.name))

    def __enter__(self) -> ScratchDatabase:
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        return self

    def __exit__(self, *exc: object) -> None:
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name)))

    def _admin(self, statement: sql.Composed) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(statement)
