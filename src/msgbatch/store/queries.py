"""Named SQL: each dialect's statements, read once from `store/sql/<dialect>.sql`.

A block starts at a line `-- name: NAME` and runs to the next one. It holds one or more
statements, each ending with `;` at the end of a line. Two directives may appear among the
block's comment lines:

    -- rows: id int8, type int2, line bytea     the step passes rows of these columns
    -- inline                                  (SQLite) a point read, run on the event loop
    -- guard                                   a check: if it returns any row, the store rolls the
                                               transaction back and raises `Refused` with the rows

Every other line starting with `--` is a comment. The two dialects define the same names, except
names that start with `_` (a dialect's own); a test holds them to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

__all__ = ["Query", "load_queries"]

_NAME = re.compile(r"^--\s*name:\s*(\S+)\s*$")
_ROWS = re.compile(r"^--\s*rows:\s*(.+?)\s*$")
_INLINE = re.compile(r"^--\s*inline\s*$")
_GUARD = re.compile(r"^--\s*guard\s*$")
_MIGRATION = re.compile(r"^migrate_(\d+)$")


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    statements: tuple[str, ...]
    # The columns of the rows the step passes, with their (PostgreSQL) types, in order.
    rows: tuple[tuple[str, str], ...] = ()
    inline: bool = False
    guard: bool = False
    # The first comment line after the name: what a migration does, for its log line.
    summary: str = ""

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.rows)


def _columns(spec: str) -> tuple[tuple[str, str], ...]:
    columns = []
    for part in spec.split(","):
        name, _, kind = part.strip().partition(" ")
        columns.append((name, kind.strip()))
    return tuple(columns)


def parse(text: str) -> dict[str, Query]:
    """The blocks of one SQL file, by name."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        match = _NAME.match(line)
        if match:
            name = match.group(1)
            if name in blocks:
                raise ValueError(f"query {name!r} is defined twice")
            current = blocks[name] = []
        elif current is not None:
            current.append(line)
    return {name: _query(name, lines) for name, lines in blocks.items()}


def _query(name: str, lines: list[str]) -> Query:
    rows: tuple[tuple[str, str], ...] = ()
    inline = False
    guard = False
    summary = ""
    body: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("--"):
            if match := _ROWS.match(stripped):
                rows = _columns(match.group(1))
            elif _INLINE.match(stripped):
                inline = True
            elif _GUARD.match(stripped):
                guard = True
            elif not summary and not body:
                summary = stripped[2:].strip()
            continue
        body.append(line)
    text = "\n".join(body)
    statements = tuple(s.strip() for s in re.split(r";[ \t]*$", text, flags=re.MULTILINE) if s.strip())
    return Query(name, statements, rows, inline, guard, summary)


@cache
def load_queries(dialect: str) -> dict[str, Query]:
    """The named statements of `sqlite` or `postgres`, parsed once per process."""
    text = resources.files("msgbatch.store").joinpath("sql", f"{dialect}.sql").read_text(encoding="utf-8")
    return parse(text)


def migrations(queries: dict[str, Query]) -> list[tuple[int, Query]]:
    """The `migrate_N` blocks, by version."""
    found = [(int(m.group(1)), q) for name, q in queries.items() if (m := _MIGRATION.match(name))]
    return sorted(found, key=lambda item: item[0])
