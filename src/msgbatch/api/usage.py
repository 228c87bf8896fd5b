"""`GET /v1/usage`: a workspace's token usage over a time range (msgbatch's own endpoint).

    GET /v1/usage?since=2026-11-01&until=2026-12-01T00:00:00Z&group_by=model,day

`since` and `until` are RFC 3339 times, dates (midnight UTC) or unix seconds (default: the 30 days
up to now); usage is kept per hour, so a range covers the whole hours it touches from `since` on.
`group_by` is any of `model` and one of `hour` / `day` (comma-separated, or the parameter
repeated); without it, one total. Each entry carries requests succeeded and errored, the four
token counts, and `cost` where the configured price table (`[prices]`) prices the model.
"""

from __future__ import annotations

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


def parse_time(name: str, value: str) -> int:
    """Unix seconds from an RFC 3339 time, a date, or a number of seconds."""
    text = value.strip()
    try:
        if text.lstrip("-").isdigit():
            return _in_range(name, int(text), value)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequestError(
            f"{name}: expected an RFC 3339 time (2026-11-01T00:00:00Z), a date or unix seconds, got {value!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _in_range(name, int(moment.timestamp()), value)


def _in_range(name: str, seconds: int, value: str) -> int:
    if not 0 <= seconds <= LATEST:
        raise InvalidRequestError(f"{name}: must be between 1970 and 9999, got {value!r}")
    return seconds


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
        raise InvalidRequestError("group_by: hour and day cannot be combined")
    return groups


async def usage(request: Request) -> Response:
    manager: BatchManager = request.app.state.manager
    workspace = workspace_of(request, manager.settings)
    params = request.query_params
    until = parse_time("until", params["until"]) if params.get("until") else int(time.time()) + 1
    since = parse_time("since", params["since"]) if params.get("since") else until - DEFAULT_RANGE
    if since >= until:
        raise InvalidRequestError("since: must be before until")
    groups = parse_groups(params.getlist("group_by"))
    body = await UsageReader(manager.store, manager.settings).usage(workspace, since, until, groups)
    return Response(msgspec.json.encode(body), media_type="application/json")


routes = [Route("/v1/usage", usage, methods=["GET"])]
