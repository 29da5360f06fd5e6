"""Webhooks: when a job with a callback_url finishes, POST it there, signed, until it is taken.

Signature (as Stripe does it): header `Fitroom-Signature: t=<unix seconds>,v1=<hex>` where
`<hex> = HMAC-SHA256(tenant's webhook secret, "<t>." + raw body)`. A receiver recomputes it over
the raw bytes it got, compares in constant time and refuses a `t` more than a few minutes old
(replays). `verify_signature` below is that check; docs/API.md shows it stand-alone.

Delivery is at least once: the outbox lives in SQLite, so a restart resumes pending deliveries,
and one that was in flight during a crash is sent again. Receivers deduplicate on the event id
(`Fitroom-Event-Id`, also the body's `id`). A non-2xx answer, a timeout or a refused address is a
failed attempt; attempt n+1 follows after min(backoff * 2**(n-1), backoff_max) seconds, until
`webhook_max_attempts`. Redirects are not followed. This outbox is embedded mode's; the
distributed mode can send from a Celery task with the same signing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from services.common.config import Settings
from services.common.errors import FitroomError
from services.gateway.db import Database
from services.gateway.fetch import SafeFetcher
from services.gateway.keys import KeyStore
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


class WebhookOutbox:
    """Pending deliveries in SQLite, sent by one scheduler thread through a few sender threads."""

    def __init__(
        self, db: Database, keys: KeyStore, fetcher: SafeFetcher, settings: Settings, metrics: Metrics
    ) -> None:
        self.db = db
        self.keys = keys
        self.fetcher = fetcher
        self.settings = settings
        self.metrics = metrics
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._senders = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fitroom-webhook")
        self._thread = threading.Thread(target=self._schedule_loop, name="fitroom-webhooks", daemon=True)

    def add(self, job_id: str, tenant: str, url: str, event: dict[str, Any]) -> str:
        """Queue `event` (its "id" is set here) for delivery to url; returns the event id."""
        event_id = f"evt_{secrets.token_hex(16)}"
        payload = json.dumps({"id": event_id, **event}, separators=(",", ":")).encode()
        now = time.time()
        self.db.execute(
            "INSERT INTO webhook_deliveries (id, job_id, tenant, url, payload, status, next_attempt_at, created_at)"
            " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
            (event_id, job_id, tenant, url, payload, now, now),
        )
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
            except Exception:  # a broken database must not kill the thread; readyz reports the database
                log.exception("webhook scheduler error")
                next_due = time.time() + 1
            self._wake.wait(timeout=min(1.0, max(0.0, next_due - time.time())))
            self._wake.clear()

    def _dispatch_due(self) -> float:
        """Hand every due delivery to a sender; returns when the next one falls due."""
        now = time.time()
        rows = self.db.query(
            "SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= ?"
            " ORDER BY next_attempt_at LIMIT 64",
            (now,),
        )
        for row in rows:
            with self._lock:
                if row["id"] in self._in_flight:
                    continue
                self._in_flight.add(row["id"])
            self._senders.submit(self._attempt, row["id"])
        upcoming = self.db.query("SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE status = 'pending'")
        return upcoming[0][0] if upcoming and upcoming[0][0] is not None else now + 1

    def _attempt(self, delivery_id: str) -> None:
        try:
            rows = self.db.query("SELECT * FROM webhook_deliveries WHERE id = ? AND status = 'pending'", (delivery_id,))
            if not rows:
                return  # erased with its job meanwhile
            row = rows[0]
            error = self._send(row["tenant"], row["url"], row["id"], row["payload"])
            self._record(row, error)
        except Exception:
            log.exception("webhook delivery %s", delivery_id)
        finally:
            with self._lock:
                self._in_flight.discard(delivery_id)
            self._wake.set()

    def _send(self, tenant: str, url: str, event_id: str, payload: bytes) -> str | None:
        """None when the receiver took it, else why not."""
        secret = self.keys.webhook_secret(tenant)
        if secret is None:
            return "the tenant has no webhook secret"
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature_header(secret, payload),
            EVENT_ID_HEADER: event_id,
        }
        try:
            response = self.fetcher.post(url, payload, headers)
        except FitroomError as exc:
            return f"{exc.code}: {exc.message}"
        return None if 200 <= response.status < 300 else f"HTTP {response.status}"

    def _record(self, row: Any, error: str | None) -> None:
        attempts = row["attempts"] + 1
        now = time.time()
        if error is None:
            self.metrics.webhook_attempts.labels("delivered").inc()
            self.db.execute(
                "UPDATE webhook_deliveries SET status = 'delivered', attempts = ?, delivered_at = ?, last_error = NULL"
                " WHERE id = ?",
                (attempts, now, row["id"]),
            )
            return
        gave_up = attempts >= self.settings.webhook_max_attempts
        self.metrics.webhook_attempts.labels("failed" if gave_up else "retry").inc()
        delay = min(self.settings.webhook_backoff_s * 2 ** (attempts - 1), self.settings.webhook_backoff_max_s)
        log.info("webhook %s attempt %d failed (%s)%s", row["id"], attempts, error, "; giving up" if gave_up else "")
        self.db.execute(
            "UPDATE webhook_deliveries SET status = ?, attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ?",
            ("failed" if gave_up else "pending", attempts, now + delay, error[:500], row["id"]),
        )
