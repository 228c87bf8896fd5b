"""Identifiers: unguessable, and strictly time-ordered so ids double as list cursors."""

from __future__ import annotations

import os
import threading
import time

# ASCII order of this alphabet is its numeric order, so fixed-width encodings sort like the numbers.
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_WIDTH = 24
_RANDOM_BITS = 94
_RANDOM_MASK = (1 << _RANDOM_BITS) - 1


def _encode(value: int, width: int = _WIDTH) -> str:
    chars = []
    for _ in range(width):
        value, rem = divmod(value, 62)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


class _MonotonicIds:
    """48 bits of milliseconds then 94 random bits, ULID-style.

    Within one millisecond the random part is incremented instead of redrawn, so ids made by one
    process are strictly increasing even when the clock stalls or steps back.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def next(self) -> int:
        with self._lock:
            candidate = (int(time.time() * 1000) << _RANDOM_BITS) | (
                int.from_bytes(os.urandom(12), "big") & _RANDOM_MASK
            )
            if candidate <= self._last:
                # Same (or earlier) millisecond: step forward by a random amount keeps it unguessable.
                candidate = self._last + 1 + (int.from_bytes(os.urandom(4), "big") & 0xFFFF)
            self._last = candidate
            return candidate


_batch_ids = _MonotonicIds()
_file_ids = _MonotonicIds()

# A batch's id says which API it belongs to: each API sees, lists and pages through its own
# prefix only (the ids sort by time within a prefix, and the prefixes never interleave).
MESSAGE_BATCH_PREFIX = "msgbatch_"
OPENAI_BATCH_PREFIX = "batch_"


def new_batch_id(prefix: str = MESSAGE_BATCH_PREFIX) -> str:
    return prefix + _encode(_batch_ids.next())


def new_file_id() -> str:
    """An uploaded file's id: `file-` and 24 characters, time-ordered like batch ids."""
    return "file-" + _encode(_file_ids.next())


def _random_id() -> str:
    # 142 random bits: as many as 24 base62 characters hold.
    return _encode(int.from_bytes(os.urandom(18), "big") >> 2)


def new_request_id() -> str:
    return "req_" + _random_id()


def new_message_id() -> str:
    return "msg_" + _random_id()


def is_batch_id(value: str) -> bool:
    return len(value) == 9 + _WIDTH and value.startswith("msgbatch_") and all(c in _ALPHABET for c in value[9:])
