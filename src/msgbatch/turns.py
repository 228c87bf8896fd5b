"""Waiting in line for a turn that another task hands out: one future per waiter, first in, first
out. The backend limiter hands out slots this way, the dispatcher's job queue wake-ups."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

__all__ = ["wait_turn"]


async def wait_turn(line: deque[asyncio.Future[None]], pass_on: Callable[[], None]) -> None:
    """Wait in `line` until a task gives this waiter its turn (resolves its future). Canceled
    after the turn was given, the turn goes to the next in line (`pass_on()`); canceled before,
    the waiter leaves the line."""
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    line.append(waiter)
    try:
        await waiter
    except asyncio.CancelledError:
        if waiter.done() and not waiter.cancelled():
            pass_on()
        else:
            with contextlib.suppress(ValueError):
                line.remove(waiter)
        raise
