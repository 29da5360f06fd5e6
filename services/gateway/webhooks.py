"""Webhooks: when a job with a callback_url finishes, POST it there, signed, until it is taken.

Signature (as Stripe does it): header `Fitroom-Signature: t=<unix seconds>,v1=<hex>` where
`<hex> = HMAC-SHA256(tenant's webhook secret, "<t>." + raw body)`. A receiver recomputes it over
the raw bytes it got, compares in constant time and refuses a `t` more than a few minutes old
(replays). `verify_signature` below is that check; docs/API.md shows it stand-alone.

Delivery is at least once: the outbox is stored (SQLite here; Redis in redis_webhooks.py for the
distributed mode), so a restart resumes pending deliveries, and one that was in flight during a
crash is sent again. A job's webhook is queued by the job store's `finish`, in the same transaction
that finishes the job: no crash or outage between the two can leave a finished job without it.
Receivers deduplicate on the event id (`Fitroom-Event-Id`, also the body's `id`). A non-2xx
answer, a timeout or a refused address is a failed attempt; attempt n+1 follows after
min(backoff * 2**(n-1), backoff_max) seconds, until `webhook_max_attempts`. Redirects are not
followed.

Both outboxes are a `Dispatcher`: one scheduler thread takes due deliveries from the store, a few
sender threads post them; `new_event`, `send` and `attempted` are the one way to build, sign and
post an event and to decide what follows an attempt.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Set
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from services.common.config import Settings
from services.common.errors import FitroomError
from services.gateway.db import Database
from services.gateway.fetch import SafeFetcher
from services.gateway.keys import ApiKeyStore
from services.gateway.metrics import Metrics

log = logging.getLogger("fitroom.gateway.webhooks")

SIGNATURE_HEADER = "Fitroom-Signature"
EVENT_ID_HEADER = "Fitroom-Event-Id"
TOLERANCE_S = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={sign(secret, t, body)}"


def verify_signature(
    secret: str, header: str, body: bytes, tolerance_s: float = TOLERANCE_S, now: float | None = None
) -> bool:
    """A receiver's check: some v1 signature matches and the timestamp is recent."""
    parts = [item.split("=", 1) for item in header.split(",") if "=" in item]
    timestamps = [v for k, v in parts if k.strip() == "t"]
    if len(timestamps) != 1 or not timestamps[0].strip().isdigit():
        return False
    t = int(timestamps[0])
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    expected = sign(secret, t, body)
    return any(k.strip() == "v1" and hmac.compare_digest(v.strip(), expected) for k, v in parts)


DeliveryStatus = Literal["pending", "delivered", "failed"]


@dataclass(frozen=True)
class DeliveryState:
    status: DeliveryStatus
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class Delivery:
    """A pending delivery as a sender needs it."""

    id: str  # the event id
    tenant: str
    url: str
    payload: bytes
    attempts: int  # made so far


@dataclass(frozen=True)
class Attempted:
    """What follows an attempt: the delivery's new state and, while pending, when to try again."""

    status: DeliveryStatus
    attempts: int
    at: float  # when the attempt ended
    next_attempt_at: float  # meaningful while pending
    last_error: str | None


@dataclass(frozen=True)
class Webhook:
    """A delivery to queue: where to, and the event (its "id" is set when it is queued)."""

    url: str
    event: dict[str, Any]


def new_event(event: dict[str, Any]) -> tuple[str, bytes]:
    """A new event id and the body sent for `event` (which gets that id as its "id")."""
    event_id = f"evt_{secrets.token_hex(16)}"
    return event_id, json.dumps({"id": event_id, **event}, separators=(",", ":")).encode()


def send(keys: ApiKeyStore, fetcher: SafeFetcher, delivery: Delivery) -> str | None:
    """POST the delivery, signed with its tenant's current secret: None when the receiver took it, else why not."""
    secret = keys.webhook_secret(delivery.tenant)
    if secret is None:
        return "the tenant has no webhook secret"
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: signature_header(secret, delivery.payload),
        EVENT_ID_HEADER: delivery.id,
    }
    try:
        response = fetcher.post(delivery.url, delivery.payload, headers)
    except FitroomError as exc:
        return f"{exc.code}: {exc.message}"
    return None if 200 <= response.status < 300 else f"HTTP {response.status}"


def attempted(delivery: Delivery, error: str | None, settings: Settings, metrics: Metrics) -> Attempted:
    """The state after one more attempt that ended with `error` (None: delivered), counted in the metrics."""
    attempts = delivery.attempts + 1
    now = time.time()
    if error is None:
        metrics.webhook_attempts.labels("delivered").inc()
        return Attempted("delivered", attempts, now, now, None)
    gave_up = attempts >= settings.webhook_max_attempts
    metrics.webhook_attempts.labels("failed" if gave_up else "retry").inc()
    delay = min(settings.webhook_backoff_s * 2 ** (attempts - 1), settings.webhook_backoff_max_s)
    log.info("webhook %s attempt %d failed (%s)%s", delivery.id, attempts, error, "; giving up" if gave_up else "")
    return Attempted("failed" if gave_up else "pending", attempts, now, now + delay, error[:500])


class Outbox(Protocol):
    """What the gateway and its workers use, whichever store holds the deliveries."""

    def add(self, job_id: str, tenant: str, url: str, event: dict[str, Any]) -> str:
        """Queue `event` (its "id" is set here) for delivery to url; returns the event id."""
        ...

    def state(self, job_id: str) -> DeliveryState | None:
        """The job's latest delivery."""
        ...

    def delete_for_job(self, job_id: str) -> None: ...

    def wake(self) -> None:
        """Look for due deliveries now (one was just queued), not within the next second."""
        ...

    def healthy(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Dispatcher(ABC):
    """One scheduler thread that hands due deliveries to a few sender threads; the store is the subclass's."""

    SENDERS = 4

    def __init__(self, keys: ApiKeyStore, fetcher: SafeFetcher, settings: Settings, metrics: Metrics) -> None:
        self.keys = keys
        self.fetcher = fetcher
        self.settings = settings
        self.metrics = metrics
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._senders = ThreadPoolExecutor(max_workers=self.SENDERS, thread_name_prefix="fitroom-webhook")
        self._thread = threading.Thread(target=self._schedule_loop, name="fitroom-webhooks", daemon=True)

    @abstractmethod
    def _take_due(self, now: float, limit: int, in_flight: Set[str]) -> tuple[list[str], float]:
        """Up to `limit` due deliveries not in flight here, and when the next one falls due."""

    @abstractmethod
    def _load(self, delivery_id: str) -> Delivery | None:
        """The delivery, if it is still pending and still ours to send."""

    @abstractmethod
    def _record(self, delivery: Delivery, outcome: Attempted) -> None: ...

    def wake(self) -> None:
        self._wake.set()

    def healthy(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=5)
        self._senders.shutdown(wait=False, cancel_futures=True)

    def _schedule_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                next_due = self._dispatch_due()
            except Exception:  # a broken store must not kill the thread; readyz reports the store
                log.exception("webhook scheduler error")
                next_due = time.time() + 1
            # Deliveries added by other processes wake nobody here: look again within a second.
            self._wake.wait(timeout=min(1.0, max(0.0, next_due - time.time())))
            self._wake.clear()

    def _dispatch_due(self) -> float:
        """Hand due deliveries to the free senders (no more: a taken delivery waits for no one);
        returns when the next one falls due."""
        with self._lock:
            in_flight = frozenset(self._in_flight)
        free = self.SENDERS - len(in_flight)
        if free <= 0:
            return time.time() + 1  # a sender finishing wakes the loop
        due, next_due = self._take_due(time.time(), free, in_flight)
        for delivery_id in due:
            with self._lock:
                if delivery_id in self._in_flight:
                    continue  # still being sent from here
                self._in_flight.add(delivery_id)
            self._senders.submit(self._attempt, delivery_id)
        return next_due

    def _attempt(self, delivery_id: str) -> None:
        try:
            delivery = self._load(delivery_id)
            if delivery is None:
                return  # erased with its job meanwhile, or taken over by another dispatcher
            error = send(self.keys, self.fetcher, delivery)
            self._record(delivery, attempted(delivery, error, self.settings, self.metrics))
        except Exception:
            log.exception("webhook delivery %s", delivery_id)
        finally:
            with self._lock:
                self._in_flight.discard(delivery_id)
            self._wake.set()


class WebhookOutbox(Dispatcher):
    """Pending deliveries in the gateway's SQLite database (embedded mode: one process sends them)."""

    def __init__(
        self, db: Database, keys: ApiKeyStore, fetcher: SafeFetcher, settings: Settings, metrics: Metrics
    ) -> None:
        super().__init__(keys, fetcher, settings, metrics)
        self.db = db

    def add(self, job_id: str, tenant: str, url: str, event: dict[str, Any]) -> str:
        """Queue `event` (its "id" is set here) for delivery to url; returns the event id."""
        with self.db.transaction() as conn:
            event_id = insert_delivery(conn, job_id, tenant, Webhook(url, event))
        self._wake.set()
        return event_id

    def state(self, job_id: str) -> DeliveryState | None:
        rows = self.db.query(
            "SELECT status, attempts, last_error FROM webhook_deliveries WHERE job_id = ? ORDER BY created_at DESC"
            " LIMIT 1",
            (job_id,),
        )
        return DeliveryState(rows[0]["status"], rows[0]["attempts"], rows[0]["last_error"]) if rows else None

    def delete_for_job(self, job_id: str) -> None:
        self.db.execute("DELETE FROM webhook_deliveries WHERE job_id = ?", (job_id,))

    def _take_due(self, now: float, limit: int, in_flight: Set[str]) -> tuple[list[str], float]:
        # One process sends from this file, so the in-flight set is the only claim needed.
        rows = self.db.query(
            "SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= ?"
            " ORDER BY next_attempt_at LIMIT ?",
            (now, limit + len(in_flight)),
        )
        due = [row["id"] for row in rows if row["id"] not in in_flight][:limit]
        upcoming = self.db.query("SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE status = 'pending'")
        return due, upcoming[0][0] if upcoming and upcoming[0][0] is not None else now + 1

    def _load(self, delivery_id: str) -> Delivery | None:
        rows = self.db.query("SELECT * FROM webhook_deliveries WHERE id = ? AND status = 'pending'", (delivery_id,))
        if not rows:
            return None
        row = rows[0]
        return Delivery(row["id"], row["tenant"], row["url"], row["payload"], row["attempts"])

    def _record(self, delivery: Delivery, outcome: Attempted) -> None:
        self.db.execute(
            "UPDATE webhook_deliveries SET status = ?, attempts = ?, next_attempt_at = ?, last_error = ?,"
            " delivered_at = CASE WHEN ? = 'delivered' THEN ? END WHERE id = ?",
            (
                outcome.status,
                outcome.attempts,
                outcome.next_attempt_at,
                outcome.last_error,
                outcome.status,
                outcome.at,
                delivery.id,
            ),
        )


def insert_delivery(conn: sqlite3.Connection, job_id: str, tenant: str, webhook: Webhook) -> str:
    """Queue a delivery inside the caller's transaction (SQLite's `finish` queues a job's webhook
    this way); returns the event id."""
    event_id, payload = new_event(webhook.event)
    now = time.time()
    conn.execute(
        "INSERT INTO webhook_deliveries (id, job_id, tenant, url, payload, status, next_attempt_at, created_at)"
        " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
        (event_id, job_id, tenant, webhook.url, payload, now, now),
    )
    return event_id
