"""Signed batch webhooks: the outbox's rules, the Standard Webhooks signature, and the URL policy.

An event (`message_batch.canceling`, `message_batch.ended`) is written to the outbox in the same
transaction as the transition that makes it (`announce_step`, run by the manager wherever a batch
is canceled or ends), one row per receiver: every `[[webhooks]]` table whose workspace and events
match, and the batch's own `webhook_url`. Any process delivers due rows (`WebhookOutbox.claim`
holds them under a lease, so a delivery whose process died is due again when the lease ends),
retried with backoff until `webhook_retry_for` has passed: at least once, across restarts.

Each delivery is signed as https://www.standardwebhooks.com specifies: headers `webhook-id` (the
event's id: the same on every attempt, so receivers can drop duplicates), `webhook-timestamp`
(seconds) and `webhook-signature` (`v1,` + base64 of HMAC-SHA256 over `id.timestamp.body`, keyed
with the base64-decoded part of a `whsec_...` secret).

URLs in the config file are trusted as written. A per-batch `webhook_url` must match one of the
configured prefixes (scheme, host and port equal, path under the prefix's), and at delivery every
address its host resolves to must be public — loopback, link-local, private and other special
addresses are refused unless the matching prefix names the host as an IP address or `localhost`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

import msgspec

from msgbatch.clock import rfc3339
from msgbatch.config import ConfigError, Settings
from msgbatch.errors import InvalidRequestError, NotFoundError
from msgbatch.store.base import Row, Step, Store

ENDED_EVENT = "message_batch.ended"
CANCELING_EVENT = "message_batch.canceling"
PENDING, DELIVERED, FAILED = 0, 1, 2
STATE_NAMES = ("pending", "delivered", "failed")
MAX_URL = 2048
DELIVERY_PREFIX = "whdel_"
_MAX_ERROR = 500
_SECRET_PREFIX = "whsec_"


# -- signing ---------------------------------------------------------------------------------------


def parse_secret(text: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (the prefix is optional); ValueError if unusable."""
    body = text.strip().removeprefix(_SECRET_PREFIX)
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("expected a whsec_ secret: base64 after the prefix") from None
    if len(key) < 16:
        raise ValueError("the secret is too short: at least 16 bytes of key (24 base64 characters)")
    return key


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header's value."""
    signed = message_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def message_id(batch_id: str, event: str) -> str:
    """The `webhook-id` of an event: the same on every attempt and for every receiver."""
    return f"msg_{batch_id}.{event.rpartition('.')[2]}"


def signing_keys(settings: Settings, env: Mapping[str, str]) -> dict[str, bytes]:
    """The secret of each env var the settings name, read now; a missing or bad one is a
    ConfigError naming its key (the secret itself is never shown)."""
    named = [(f"webhooks[{i}].secret_env", hook.secret_env) for i, hook in enumerate(settings.webhooks)]
    if settings.webhook_url_prefixes:
        named.append(("webhook_url_secret_env", settings.webhook_url_secret_env))
    keys: dict[str, bytes] = {}
    for key, name in named:
        value = env.get(name, "")
        if not value:
            raise ConfigError(f"environment variable {name} is not set", key=key)
        try:
            keys[name] = parse_secret(value)
        except ValueError as exc:
            raise ConfigError(f"environment variable {name}: {exc}", key=key) from None
    return keys


# -- the URL policy --------------------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Prefix:
    """An allow-list entry, parsed: a per-batch URL matches it by scheme, host, port and path."""

    text: str
    scheme: str
    host: str
    port: int
    path: str

    @property
    def names_address(self) -> bool:
        """Whether the entry names its host as an address (an IP literal, or `localhost`): then
        that address may be private, the operator having said so."""
        if self.host == "localhost":
            return True
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def _parts(url: str) -> tuple[SplitResult, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return parts, port or _DEFAULT_PORTS[parts.scheme]


def parse_prefix(text: str) -> Prefix:
    found = _parts(text)
    if found is None:
        raise ValueError(f"not an http(s) URL prefix: {text!r}")
    parts, port = found
    return Prefix(text, parts.scheme, (parts.hostname or "").lower(), port, parts.path or "/")


def matching_prefix(url: str, prefixes: Sequence[str]) -> Prefix | None:
    """The allow-list entry `url` falls under, if any."""
    found = _parts(url)
    if found is None:
        return None
    parts, port = found
    host, path = (parts.hostname or "").lower(), parts.path or "/"
    if any(unquote(segment) in (".", "..") for segment in path.split("/")):
        return None  # a dot segment could climb out of the prefix once normalized
    for text in prefixes:
        prefix = parse_prefix(text)
        if (parts.scheme, host, port) != (prefix.scheme, prefix.host, prefix.port):
            continue
        under = prefix.path if prefix.path.endswith("/") else prefix.path + "/"
        if path == prefix.path or path.startswith(under):
            return prefix
    return None


def check_webhook_url(value: object, settings: Settings) -> str:
    """A create body's `webhook_url`, allowed by the configured prefixes (its addresses are
    checked when it is delivered to)."""
    if not isinstance(value, str):
        raise InvalidRequestError("webhook_url: Input should be a valid string")
    if len(value) > MAX_URL:
        raise InvalidRequestError(f"webhook_url: String should have at most {MAX_URL} characters")
    if _parts(value) is None:
        raise InvalidRequestError("webhook_url: Input should be an http:// or https:// URL with a host")
    if urlsplit(value).username is not None:
        raise InvalidRequestError("webhook_url: a URL with credentials in it is not accepted")
    if not settings.webhook_url_prefixes:
        raise InvalidRequestError("webhook_url: per-batch webhooks are not enabled on this server")
    if matching_prefix(value, settings.webhook_url_prefixes) is None:
        raise InvalidRequestError("webhook_url: the URL is not under any of the prefixes this server allows")
    return value


def refused_address(address: str, prefix: Prefix) -> str | None:
    """Why a per-batch webhook may not be sent to this resolved address, or None."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_global and not ip.is_multicast:
        return None
    if prefix.names_address and ((prefix.host == "localhost" and ip.is_loopback) or prefix.host == str(ip)):
        return None
    kind = (
        "loopback" if ip.is_loopback
        else "link-local" if ip.is_link_local
        else "unspecified" if ip.is_unspecified
        else "multicast" if ip.is_multicast
        else "private" if ip.is_private
        else "non-public"
    )  # fmt: skip
    return f"{prefix.host} resolves to a {kind} address ({ip}), which the allow-list does not name"


def shown_url(url: str) -> str:
    """A URL fit to show a workspace: no credentials, no query (either may hold a token)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{netloc}{parts.path}"


# -- the payload -----------------------------------------------------------------------------------


def payload(event: str, event_at: int, batch: dict[str, Any] | None, batch_id: str) -> bytes:
    """The body of a delivery: `{"type", "timestamp", "data"}`, data being the batch object (or
    only its id, when the batch was deleted before the first attempt)."""
    data = batch if batch is not None else {"id": batch_id, "type": "message_batch"}
    return msgspec.json.encode({"type": event, "timestamp": rfc3339(event_at), "data": data})


# -- the outbox ------------------------------------------------------------------------------------


class Delivery(msgspec.Struct, frozen=True, gc=False):
    """A claimed delivery, ready to send."""

    id: int
    batch_id: str
    workspace: str
    event: str
    event_at: int
    url: str
    secret_env: str
    checked: bool  # a per-batch URL: the allow-list and its addresses are checked before sending
    attempts: int
    payload: bytes | None
    give_up_at: int


def announce_step(settings: Settings, now: int) -> Step:
    """The step that writes the webhook events of the transitions in its transaction to the outbox
    (every transaction that cancels or ends a batch runs it last)."""
    hooks = settings.webhooks
    return Step(
        "announce_events",
        {
            "urls": [h.url for h in hooks],
            "secret_envs": [h.secret_env for h in hooks],
            "workspaces": [h.workspace or "" for h in hooks],
            "events": [",".join(h.events) for h in hooks],
            "batch_secret_env": settings.webhook_url_secret_env,
            "now": now,
            "give_up_at": now + int(settings.webhook_retry_for * 1_000_000),
        },
    )


def delivery_id(value: str) -> int:
    digits = value[len(DELIVERY_PREFIX) :]
    if not value.startswith(DELIVERY_PREFIX) or not (digits.isascii() and digits.isdigit() and len(digits) <= 18):
        raise NotFoundError("Webhook delivery not found.")
    return int(digits)


def _cursor(value: str) -> int:
    try:
        return delivery_id(value)
    except NotFoundError:
        raise InvalidRequestError("after_id: Input should be a webhook delivery ID (whdel_...)") from None


def render_delivery(row: Row) -> dict[str, Any]:
    (rid, batch_id, event, event_at, url, checked, state, attempts, next_at, _give_up, created_at, delivered_at,
     last_status, last_error) = row  # fmt: skip
    return {
        "id": f"{DELIVERY_PREFIX}{rid}",
        "type": "webhook_delivery",
        "batch_id": batch_id,
        "event": event,
        "event_at": rfc3339(event_at),
        "url": shown_url(url),
        "source": "batch" if checked else "config",
        "status": STATE_NAMES[state],
        "attempts": attempts,
        "created_at": rfc3339(created_at),
        "next_attempt_at": rfc3339(next_at) if state == PENDING else None,
        "delivered_at": rfc3339(delivered_at),
        "last_status_code": last_status,
        "last_error": last_error,
    }


class WebhookOutbox:
    """The rules of the delivery rows: claim under a lease, record each attempt, list, redeliver."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    async def claim(self, owner: str, limit: int, now: int, until: int) -> list[Delivery]:
        (rows,) = await self.store.run(
            Step("claim_webhook_deliveries", {"owner": owner, "limit": limit, "now": now, "until": until})
        )
        return [
            Delivery(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), r[8], bytes(r[9]) if r[9] else None, r[10])
            for r in rows
        ]

    async def delivered(self, owner: str, delivery: Delivery, status: int, body: bytes, now: int) -> None:
        await self.store.run(
            Step(
                "webhook_delivered",
                {"id": delivery.id, "owner": owner, "status": status, "payload": body, "now": now},
            )
        )

    async def failed(
        self,
        owner: str,
        delivery: Delivery,
        *,
        status: int | None,
        error: str,
        body: bytes | None,
        next_at: int,
        final: bool = False,
    ) -> bool:
        """Record a failed attempt; whether the delivery was given up."""
        (rows,) = await self.store.run(
            Step(
                "webhook_failed",
                {
                    "id": delivery.id,
                    "owner": owner,
                    "status": status,
                    "error": error[:_MAX_ERROR],
                    "payload": body,
                    "next_at": next_at,
                    "final": final,
                },
            )
        )
        return bool(rows) and rows[0][0] == FAILED

    async def list(
        self,
        workspace: str,
        *,
        limit: int,
        before_id: str | None = None,
        batch_id: str | None = None,
        state: str | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        if not 1 <= limit <= 1000:
            raise InvalidRequestError(
                "limit: Input should be greater than or equal to 1 and less than or equal to 1000"
            )
        if state is not None and state not in STATE_NAMES:
            raise InvalidRequestError(f"status: Input should be one of {', '.join(STATE_NAMES)}")
        rows = await self.store.read(
            "list_webhook_deliveries",
            {
                "workspace": workspace,
                "before": _cursor(before_id) if before_id else 1 << 62,
                "batch_id": batch_id,
                "state": STATE_NAMES.index(state) if state is not None else None,
                "limit": limit + 1,
            },
        )
        return [render_delivery(r) for r in rows[:limit]], len(rows) > limit

    async def redeliver(self, workspace: str, delivery: str, now: int) -> dict[str, Any]:
        rid = delivery_id(delivery)
        give_up_at = now + int(self.settings.webhook_retry_for * 1_000_000)
        (found,) = await self.store.run(
            Step("redeliver_webhook", {"id": rid, "workspace": workspace, "now": now, "give_up_at": give_up_at})
        )
        if not found:
            raise NotFoundError("Webhook delivery not found.")
        rows = await self.store.read("get_webhook_delivery", {"id": rid, "workspace": workspace})
        return render_delivery(rows[0])

    async def forget(self, cutoff: int) -> None:
        """Deliveries done (delivered or given up) before `cutoff` go."""
        await self.store.run(Step("forget_webhook_deliveries", {"cutoff": cutoff}))
