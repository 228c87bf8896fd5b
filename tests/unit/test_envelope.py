"""parse_create_body: the create call's envelope, the whole body checked as JSON (UTF-8, depth)."""

from __future__ import annotations

import json

import pytest

from msgbatch.envelope import _UTF8_SLICE, parse_create_body
from msgbatch.errors import InvalidRequestError


def body_with_text(text: str) -> bytes:
    params = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": text}]}
    return json.dumps({"requests": [{"custom_id": "a", "params": params}]}, ensure_ascii=False).encode()


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_non_ascii_bodies_pass_whatever_their_buffer(kind: type) -> None:
    body = body_with_text("café, 東京, 🙂")
    requests = parse_create_body(kind(body), 10)
    assert json.loads(bytes(requests[0].params))["messages"][0]["content"] == "café, 東京, 🙂"


def test_a_character_across_the_slice_boundary_is_valid_utf8() -> None:
    # The check decodes the body in slices; a multi-byte character may straddle two of them.
    head = body_with_text("x")
    filler = "a" * (_UTF8_SLICE - head.index(b'"x"') - 2)
    for shift in range(4):
        body = body_with_text(filler + "b" * shift + "🙂" + "é" * 3)
        assert parse_create_body(body, 10)[0].custom_id == "a"


def test_invalid_utf8_beyond_the_first_slice_is_found() -> None:
    body = body_with_text("a" * (3 * _UTF8_SLICE) + "é").replace("é".encode(), b"\xc3(")
    with pytest.raises(InvalidRequestError, match=r"invalid UTF-8 at byte \d+ \(invalid continuation byte\)"):
        parse_create_body(body, 10)


def test_any_depth_is_a_400_not_a_crash() -> None:
    for depth in (967, 5_000, 100_000):
        body = b'{"requests": [{"custom_id": "a", "params": {"x": ' + b"[" * depth + b"]" * depth + b"}}]}"
        with pytest.raises(InvalidRequestError, match="nests arrays and objects too deeply"):
            parse_create_body(body, 10)
    # Reasonable nesting is fine.
    body = b'{"requests": [{"custom_id": "a", "params": {"x": ' + b"[" * 200 + b"]" * 200 + b"}}]}"
    assert parse_create_body(body, 10)[0].custom_id == "a"


def test_an_escaped_backslash_before_u_is_text_not_a_surrogate() -> None:
    # `\\ud800` in JSON is a backslash followed by "ud800": valid, and no surrogate.
    body = body_with_text("\\ud800")
    assert b"\\\\ud800" in body
    assert parse_create_body(body, 10)[0].custom_id == "a"


def test_a_view_of_part_of_a_buffer_is_checked_for_its_own_bytes() -> None:
    body = body_with_text("fine")
    buffer = bytearray(body + b"\xff\xfe trailing garbage")
    assert parse_create_body(memoryview(buffer)[: len(body)], 10)[0].custom_id == "a"
