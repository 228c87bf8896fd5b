"""API keys and workspaces: every key belongs to one workspace, and a batch to the workspace that made it."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from msgbatch.config import Settings
from msgbatch.errors import AuthenticationError, PermissionDeniedError

DEFAULT_WORKSPACE = "default"


def api_key_of(request: Request) -> str:
    key = request.headers.get("x-api-key", "")
    if not key:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            key = token.strip()
    return key


def workspace_of(request: Request, settings: Settings) -> str:
    key = api_key_of(request)
    if not key:
        raise AuthenticationError("x-api-key header is required")
    if settings.open_auth:
        workspace = DEFAULT_WORKSPACE
    else:
        found = None
        for candidate, ws in settings.api_keys.items():
            if hmac.compare_digest(candidate.encode(), key.encode()):
                found = ws
        if found is None:
            raise AuthenticationError("invalid x-api-key")
        workspace = found
    asked = request.headers.get("anthropic-workspace-id")
    if asked and asked != workspace:
        raise PermissionDeniedError(f"This API key does not have access to workspace {asked}")
    return workspace
