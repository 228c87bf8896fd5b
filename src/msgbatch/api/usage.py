"""`GET /v1/usage`: a workspace's token usage over a time range (msgbatch's own endpoint).

    GET /v1/usage?since=2026-11-01&until=2026-12-01T00:00:00Z&group_by=model,day

`since` and `until` are RFC 3339 times, dates (midnight UTC) or unix seconds (default: the 30 days
up to now; a time outside 1970 to 9999 is taken as the nearer end); usage is kept per hour, so a
range covers the whole hours it touches from `since` on. `group_by` is any of `model`, `hour` and
`day` (comma-separated, or the parameter repeated; with both, `hour`); without it, one total. Each
entry carries requests succeeded and errored, the four token counts, and `cost` where the
configured price table (`[prices]`) prices the model.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from msgbatch.api.auth import workspace_of
from msgbatch.errors import InvalidRequestError
from msgbatch.manager import BatchManager
from msgbatch.usage import GROUPS, UsageReader

DEFAULT_RANGE = 30 * 86400
LATEST = 253402300799  # 9999-12-31T23:59:59Z


_SECONDS = re.compile(r"[0-9]{1,15}")
_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_DATE_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def parse_time(name: str, value: str) -> int:
    """Unix seconds from an RFC 3339 time, a date (midnight UTC) or a number of seconds; a time
    before 1970 or after 9999 is taken as the nearer of the two (a range is clamped, not refused)."""
    text = value.strip()
    if _SECONDS.fullmatch(text):
        return min(int(text), LATEST)
    found = _DATE_TIME.fullmatch(text) or _DATE.fullmatch(text)
    if found is None:
        raise InvalidRequestError(
            f"{name}: expected an RFC 3339 time (2026-11-01T00:00:00Z), a date or unix seconds, got {value!r}"
        )
    year, month, day, hour, minute, second, offset = (*found.groups(), "0", "0", "0", "Z")[:7]
    try:
        # A leap second (:60) is the second before it; year 0 is the earliest there is.
        at = datetime(max(1, int(year)), int(month), int(day), int(hour), int(minute), min(int(second), 59), tzinfo=UTC)
    except ValueError as exc:
        raise InvalidRequestError(f"{name}: {exc}, got {value!r}") from None
    seconds = int(at.timestamp())
    if offset not in ("Z", "z"):
        sign = 1 if offset[0] == "+" else -1
        seconds -= sign * (int(offset[1:3]) * 3600 + int(offset[4:6]) * 60)
    return max(0, min(seconds, LATEST))


def parse_groups(values: list[str]) -> list[str]:
    groups: list[str] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            if item not in GROUPS:
                raise InvalidRequestError(f"group_by: Input should be one of {', '.join(GROUPS)}, got {item!r}")
            if item not in groups:
                groups.append(item)
    if "hour" in groups and "day" in groups:
        groups.remove("day")  # the finer of the two
    return groups


async def usage(request: Request) -> Response:
    manager: BatchManager = request.app.state.manager
    workspace = workspace_of(request, manager.settings)
    params = request.query_params
    until = parse_time("until", params["until"]) if params.get("until") else int(time.time()) + 1
    since = parse_time("since", params["since"]) if params.get("since") else until - DEFAULT_RANGE
    since = min(since, until)  # an empty range is empty, not an error
    groups = parse_groups(params.getlist("group_by"))
    body = await UsageReader(manager.store, manager.settings).usage(workspace, since, until, groups)
    return Response(msgspec.json.encode(body), media_type="application/json")


routes = [Route("/v1/usage", usage, methods=["GET"])]
