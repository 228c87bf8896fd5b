"""Webhook delivery: every process sends the due rows of the outbox (msgbatch.webhooks).

loop      claims due deliveries under a lease (a few at a time, up to `concurrency` in flight),
          sends each, records the attempt; wakes when this process writes events, else polls
send      fixes the payload at the first attempt (the batch object then), signs it (Standard
          Webhooks), POSTs it with `webhook_timeout`, no redirects; 2xx is delivered, anything
          else (a status, a timeout, a refused connection) is retried with backoff until
          `webhook_retry_for` has passed
checked   a per-batch URL must still be under an allowed prefix, and every address its host
          resolves to must be one the policy allows; the request goes to the checked address
          (the Host header and TLS name stay the URL's), so a second lookup cannot change it
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

import httpx

from msgbatch import __version__
from msgbatch.clock import now_us
from msgbatch.config import Settings
from msgbatch.engine.supervisor import Supervisor
from msgbatch.errors import ServiceUnavailableError
from msgbatch.manager import BatchManager
from msgbatch.metrics import Metrics
from msgbatch.webhooks import (
    Delivery,
    matching_prefix,
    message_id,
    parse_secret,
    payload,
    refused_address,
    signature,
    signing_keys,
)

log = logging.getLogger("msgbatch.webhooks")

_MAX_BACKOFF = 3600.0


class Refused(Exception):
    """The policy forbids sending this delivery (a per-batch URL): it is not retried."""


class WebhookDelivery:
    def __init__(
        self,
        manager: BatchManager,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        env: Mapping[str, str] | None = None,
        owner: str | None = None,
        concurrency: int = 8,
    ) -> None:
        self.manager = manager
        self.outbox = manager.outbox
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.env = os.environ if env is None else env
        # Read now: a missing or malformed secret stops the process before it starts (ConfigError).
        self.keys = signing_keys(settings, self.env)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}:webhooks"
        self.concurrency = concurrency
        self.timeout = float(settings.webhook_timeout)
        self.lease_us = int((self.timeout + 30.0) * 1_000_000)
        self.poll_interval = max(float(settings.poll_interval), 0.05)
        self.base_url = (settings.public_url or f"http://{settings.host}:{settings.port}").rstrip("/")
        self.supervisor = Supervisor(self.owner)
        self._wake = asyncio.Event()
        self._sending: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None
        manager.on_announced.append(self.wake)

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self.supervisor.start("webhooks", self._loop)

    def _http(self) -> httpx.AsyncClient:
        # Made at the first delivery: its TLS context takes ~35 ms to load the CA bundle, which a
        # process that never sends a webhook (most of them) need not spend at every start.
        if self._client is None:
            # No proxies from the environment: a per-batch URL goes to the address it was checked at.
            self._client = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False, trust_env=False)
        return self._client

    async def stop(self) -> None:
        await self.supervisor.stop()
        for task in list(self._sending):
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _loop(self) -> None:
        while True:
            free = self.concurrency - len(self._sending)
            deliveries = []
            if free > 0:
                self._wake.clear()
                now = now_us()
                try:
                    deliveries = await self.outbox.claim(self.owner, free, now, now + self.lease_us)
                except ServiceUnavailableError:
                    pass  # the database is away (the store said so once): deliveries wait in it

                for delivery in deliveries:
                    task = asyncio.create_task(self._send_one(delivery), name=f"msgbatch-webhook-{delivery.id}")
                    self._sending.add(task)
                    task.add_done_callback(self._done)
            if not deliveries:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
                # that arrives as the event is set, and the loop would outlive stop().
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval):
                        await self._wake.wait()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._wake.set()  # a free slot
        error = None if task.cancelled() else task.exception()
        if error is not None and not isinstance(error, ServiceUnavailableError):
            # The attempt is not recorded: the delivery is due again when its lease ends.
            log.error("webhook.failed_to_record error=%s", error)

    # -- one delivery ----------------------------------------------------------------------------

    async def _body(self, delivery: Delivery) -> bytes:
        if delivery.payload is not None:
            return delivery.payload
        batch = await self.manager.find(delivery.batch_id)
        shown = self.manager.render(batch, self.base_url) if batch is not None else None
        return payload(delivery.event, delivery.event_at, shown, delivery.batch_id)

    async def _send_one(self, delivery: Delivery) -> None:
        body: bytes | None = None
        status: int | None = None
        started = time.perf_counter()
        try:
            body = await self._body(delivery)
            status = await self._post(delivery, body)
        except Refused as exc:
            await self._record_failure(delivery, body, None, str(exc), final=True)
            self.metrics.webhook_delivery(delivery.event, "refused", time.perf_counter() - started)
            log.warning("webhook.refused id=%d batch=%s event=%s reason=%s", delivery.id, delivery.batch_id,
                        delivery.event, exc)  # fmt: skip
            return
        except (httpx.HTTPError, OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if isinstance(exc, httpx.TimeoutException):
                error = f"no answer within {self.timeout:g}s"
            await self._record_failure(delivery, body, None, error)
            self.metrics.webhook_delivery(delivery.event, "failed", time.perf_counter() - started)
            return
        elapsed = time.perf_counter() - started
        if 200 <= status < 300:
            await self.outbox.delivered(self.owner, delivery, status, body, now_us())
            self.metrics.webhook_delivery(delivery.event, "delivered", elapsed)
            log.info("webhook.delivered id=%d batch=%s event=%s status=%d attempts=%d", delivery.id,
                     delivery.batch_id, delivery.event, status, delivery.attempts + 1)  # fmt: skip
            return
        await self._record_failure(delivery, body, status, f"the receiver answered HTTP {status}")
        self.metrics.webhook_delivery(delivery.event, "failed", elapsed)

    async def _record_failure(
        self, delivery: Delivery, body: bytes | None, status: int | None, error: str, *, final: bool = False
    ) -> None:
        delay = min(float(self.settings.webhook_backoff) * 2**delivery.attempts, _MAX_BACKOFF)
        delay *= 0.75 + random.random() / 2  # spread retries of many deliveries apart
        next_at = now_us() + int(delay * 1_000_000)
        gave_up = await self.outbox.failed(
            self.owner, delivery, status=status, error=error, body=body, next_at=next_at, final=final
        )
        if gave_up:
            self.metrics.webhook_delivery(delivery.event, "gave_up", 0.0)
            log.warning("webhook.gave_up id=%d batch=%s event=%s attempts=%d error=%s", delivery.id,
                        delivery.batch_id, delivery.event, delivery.attempts + 1, error)  # fmt: skip
        else:
            log.info("webhook.retry id=%d batch=%s event=%s attempts=%d in=%.1fs error=%s", delivery.id,
                     delivery.batch_id, delivery.event, delivery.attempts + 1, delay, error)  # fmt: skip

    def _key(self, secret_env: str) -> bytes:
        key = self.keys.get(secret_env)
        if key is None:  # named by a row from a process configured otherwise: read it now
            value = self.env.get(secret_env, "")
            if not value:
                raise ValueError(f"the signing secret's environment variable {secret_env} is not set")
            key = self.keys[secret_env] = parse_secret(value)
        return key

    async def _post(self, delivery: Delivery, body: bytes) -> int:
        msg_id = message_id(delivery.batch_id, delivery.event)
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": f"msgbatch/{__version__}",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(self._key(delivery.secret_env), msg_id, timestamp, body),
        }
        url = delivery.url
        extensions = {}
        if delivery.checked:
            url, host_header, sni = await self._pinned(url)
            headers["host"] = host_header
            if sni:
                extensions["sni_hostname"] = sni
        async with self._http().stream("POST", url, content=body, headers=headers, extensions=extensions) as answer:
            return answer.status_code  # the body is not read: a receiver cannot make us hold much

    async def _pinned(self, url: str) -> tuple[str, str, str | None]:
        """A per-batch URL, checked, rewritten to the address it was checked at: (URL, Host
        header, TLS server name)."""
        prefix = matching_prefix(url, self.settings.webhook_url_prefixes)
        if prefix is None:
            raise Refused("the URL is no longer under any allowed prefix (webhook_url_prefixes)")
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise OSError(f"cannot resolve {host}: {exc.strerror}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
        for address in addresses:
            if (why := refused_address(address, prefix)) is not None:
                raise Refused(why)
        address = addresses[0]
        literal = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
        netloc = f"{literal}:{parts.port}" if parts.port else literal
        host_header = parts.netloc.rpartition("@")[2]
        pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        return pinned, host_header, host if parts.scheme == "https" else None
