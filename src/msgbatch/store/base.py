"""The store interface: a dialect that runs named statements. Every rule lives above it.

A store knows its database and nothing of batches: it runs the named statements of its SQL file
(`store/sql/<dialect>.sql`, the same names in every dialect), a group of them atomically, and
delivers wake-ups between processes. What the statements mean, and which ones make up a
transition, is decided once by the manager (`msgbatch.manager`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from msgbatch.models import Batch

Row = tuple[Any, ...]


class Refused(Exception):
    """A `-- guard` step returned rows: the transaction was rolled back. `rows` say why."""

    def __init__(self, step: str, rows: list[Row]) -> None:
        super().__init__(f"{step}: {rows}")
        self.step = step
        self.rows = rows


@dataclass(frozen=True, slots=True)
class Step:
    """One named statement (or block of them) to run, with its parameters.

    `rows`, for a statement that declares `-- rows:` columns, are its input rows (iterated once):
    SQLite runs the row-wise statements once per row, PostgreSQL gets each column as an array.
    A list or tuple parameter is an array (SQLite: a JSON array, read with json_each).
    """

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    rows: Iterable[Sequence[Any]] = ()


class Store(Protocol):
    dialect: str
    # Whether one process owns the database (SQLite): then leases held at start-up are stale.
    single_process: bool

    async def open(self) -> None:
        """Connect, and bring the schema up to date (`migrate`)."""
        ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def migrate(self) -> list[int]:
        """Apply the migrations the database lacks; returns the versions applied."""
        ...

    async def read(self, name: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        """The rows of a named read, outside any write transaction."""
        ...

    async def run(self, *steps: Step, durable: bool = False) -> list[list[Row]]:
        """Run the steps in order in one transaction; the rows each step returned. A `-- guard`
        step that returns rows rolls it back and raises `Refused`.

        `durable`: the commit must survive a power loss, not only a crash (an accepted batch)."""
        ...

    async def listen(self, on_notice: Callable[[str], None]) -> None:
        """Until `close()`, call `on_notice(payload)` for each `notify` step another process ran.
        Returns at once; a single-process store has nothing to listen to."""
        ...

    async def tidy(self) -> None:
        """The dialect's own periodic upkeep (PostgreSQL: vacuum the queue if nothing else does)."""
        ...


# The batch columns every batch query selects first, in this order (`priority` last; a dialect's
# own come after).
BATCH_COLUMNS = 31


def batch_from_row(row: Sequence[Any]) -> Batch:
    return Batch(
        seq=row[0],
        id=row[1],
        workspace=row[2],
        status=row[3],
        created_at=row[4],
        expires_at=row[5],
        ended_at=row[6],
        cancel_initiated_at=row[7],
        archived_at=row[8],
        total=row[9],
        processing=row[10],
        succeeded=row[11],
        errored=row[12],
        canceled=row[13],
        expired=row[14],
        first_request=row[15],
        betas=row[16],
        headers=row[17],
        metadata=row[18],
        input_tokens=row[19],
        output_tokens=row[20],
        cache_read_input_tokens=row[21],
        cache_creation_input_tokens=row[22],
        retry_of=row[23],
        retried_by=row[24],
        cancel_reason=row[25],
        abort_running=bool(row[26]),
        fail_fast_min_results=row[27],
        fail_fast_max_error_rate=row[28],
        webhook_url=row[29],
        priority=row[30],
    )
