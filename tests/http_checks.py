"""Checks and raw-socket helpers for the tests of the HTTP edge (in process and against `msgbatch serve`)."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

import httpx2
import msgspec

REQUEST_ID = re.compile(r"^req_[0-9A-Za-z]+$")


def check_error(status: int, headers: dict[str, str], body: bytes, expected: int, error_type: str) -> str:
    """The one error shape, with the request id in the header and the body alike; returns the message."""
    assert status == expected, (status, body[:500])
    assert headers["content-type"].startswith("application/json"), headers
    parsed = msgspec.json.decode(body)
    assert set(parsed) == {"type", "error", "request_id"} and parsed["type"] == "error", parsed
    assert set(parsed["error"]) == {"type", "message"} and parsed["error"]["type"] == error_type, parsed
    assert REQUEST_ID.match(parsed["request_id"]) and headers["request-id"] == parsed["request_id"], parsed
    assert headers.get("cache-control") == "no-store"
    message: str = parsed["error"]["message"]
    assert message
    return message


def check(resp: httpx2.Response, expected: int, error_type: str) -> str:
    return check_error(resp.status_code, dict(resp.headers), resp.content, expected, error_type)


@dataclass
class Raw:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_response(data: bytes) -> Raw:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return Raw(status, headers, body)


def read_all(sock: socket.socket, timeout: float = 15.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def exchange(port: int, data: bytes, timeout: float = 15.0) -> Raw:
    """Send `data` on a new connection and read until the server closes it (or `timeout`)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(data)
        return parse_response(read_all(sock, timeout))


def check_raw(raw: Raw, status: int, error_type: str) -> str:
    return check_error(raw.status, raw.headers, raw.body, status, error_type)


def memory_of(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def request_head(method: str, path: str, *headers: str) -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", "host: 127.0.0.1", *headers, "", ""]).encode()
