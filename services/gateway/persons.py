"""The storefront's state: registered shoppers' photos (persons) and batches of try-ons on one person.

A person is a photo read and checked once; every try-on naming its `person_id` reads the photo from
the store, and the pipeline finds its pose and parse cached under the photo's content hash (computed
by the first try-on, reused by the rest). The cache belongs to the person: erasing one of its jobs
leaves it; erasing the person takes it.

A batch is N ordinary jobs on one person (a registered one, or a photo of the batch's own) with a
`batch_id`; it ends when the last of them has, and `finish` queues its webhook in the transaction
that ends it, first writer wins, exactly as a job's. Whoever sees the last job end settles the batch
(`settle_batch`): the worker that finished it, and any status read (so a crash between the two
cannot leave a batch running for ever).

`PersonRegistry` and `BatchStore` have SQLite versions here and Redis ones in redis_persons.py.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, Protocol

from services.gateway.db import Database
from services.gateway.jobs import CategoryChoice, Job, JobStore, OutputFormat, is_id, new_id
from services.gateway.webhooks import Webhook, insert_delivery

BatchStatus = Literal["running", "finished"]
MAX_BATCH = 100  # garments in one batch

new_person_id = partial(new_id, "per")
new_batch_id = partial(new_id, "bat")
is_person_id = partial(is_id, "per")
is_batch_id = partial(is_id, "bat")


@dataclass(frozen=True)
class Person:
    id: str
    tenant: str
    person_prefix: str  # pipeline.person_prefix of the photo: where its pose and parse are cached
    width: int
    height: int
    shopper_id: str | None = None
    created_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Batch:
    id: str
    tenant: str
    job_ids: tuple[str, ...]  # in the request's order
    category: CategoryChoice
    output_format: OutputFormat
    person_prefix: str
    base_url: str
    person_id: str | None = None  # None: the batch carries its own photo
    shopper_id: str | None = None
    callback_url: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    status: BatchStatus = "running"
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def owns_person_cache(self) -> bool:
        """A batch with a photo of its own keeps that photo's cached pose and parse until it is erased."""
        return self.person_id is None


# Given the finished batch, the webhook to queue with it (None: it has no callback_url).
BatchWebhookFor = Callable[[Batch], Webhook | None]


class BatchKeyTaken(Exception):
    """create() found a live batch under the same tenant and Idempotency-Key."""

    def __init__(self, existing: Batch) -> None:
        super().__init__(existing.id)
        self.existing = existing


class PersonRegistry(Protocol):
    def add(self, person: Person) -> None: ...

    def get(self, tenant: str, person_id: str) -> Person | None: ...

    def delete(self, tenant: str, person_id: str) -> Person | None: ...

    def of_shopper(self, tenant: str, shopper_id: str) -> list[Person]: ...

    def created_before(self, cutoff: float, limit: int = 100) -> list[Person]:
        """Persons registered before cutoff (the janitor erases them after the retention period)."""
        ...


class BatchStore(Protocol):
    def create(self, batch: Batch, idempotency_ttl_s: float) -> Batch:
        """Insert a running batch; BatchKeyTaken when its Idempotency-Key names a batch younger than the ttl."""
        ...

    def get(self, tenant: str, batch_id: str) -> Batch | None: ...

    def by_idempotency_key(self, tenant: str, key: str, ttl_s: float) -> Batch | None: ...

    def finish(self, batch_id: str, webhook: BatchWebhookFor | None = None) -> Batch | None:
        """running -> finished, with `webhook(batch)` queued in the same transaction; None when it was
        deleted or already finished (the first writer wins, and only its webhook is queued)."""
        ...

    def delete(self, tenant: str, batch_id: str) -> Batch | None: ...

    def of_shopper(self, tenant: str, shopper_id: str) -> list[Batch]: ...

    def finished_before(self, cutoff: float, limit: int = 100) -> list[Batch]: ...


@dataclass(frozen=True)
class Settled:
    batch: Batch | None  # None: no such batch (for this tenant)
    jobs: list[Job]  # its jobs, in the request's order (erased ones left out)
    ended_now: bool  # this call finished it (and queued its webhook)


def settle_batch(
    batches: BatchStore,
    jobs: JobStore,
    tenant: str,
    batch_id: str,
    webhook: Callable[[Batch, list[Job]], Webhook | None] | None = None,
) -> Settled:
    """The batch and its jobs; the batch finished first (its webhook queued) when every job has ended.
    A job erased meanwhile counts as ended. Safe to call any number of times, from any process."""
    batch = batches.get(tenant, batch_id)
    if batch is None:
        return Settled(None, [], False)
    members = jobs.get_many(tenant, batch.job_ids)
    if batch.finished or not all(job.finished for job in members):
        return Settled(batch, members, False)
    finished = batches.finish(batch.id, (lambda b: webhook(b, members)) if webhook else None)
    if finished is None:  # someone else finished (or erased) it meanwhile
        return Settled(batches.get(tenant, batch_id), members, False)
    return Settled(finished, members, True)


class SqlitePersonRegistry:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, person: Person) -> None:
        self.db.execute(
            "INSERT INTO persons (id, tenant, created_at, person_prefix, width, height, shopper_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                person.id,
                person.tenant,
                person.created_at,
                person.person_prefix,
                person.width,
                person.height,
                person.shopper_id,
            ),
        )

    def get(self, tenant: str, person_id: str) -> Person | None:
        rows = self.db.query("SELECT * FROM persons WHERE id = ? AND tenant = ?", (person_id, tenant))
        return _person(rows[0]) if rows else None

    def delete(self, tenant: str, person_id: str) -> Person | None:
        with self.db.transaction() as conn:
            row = conn.execute("SELECT * FROM persons WHERE id = ? AND tenant = ?", (person_id, tenant)).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM persons WHERE id = ?", (person_id,))
        return _person(row)

    def of_shopper(self, tenant: str, shopper_id: str) -> list[Person]:
        rows = self.db.query("SELECT * FROM persons WHERE tenant = ? AND shopper_id = ?", (tenant, shopper_id))
        return [_person(row) for row in rows]

    def created_before(self, cutoff: float, limit: int = 100) -> list[Person]:
        rows = self.db.query("SELECT * FROM persons WHERE created_at < ? LIMIT ?", (cutoff, limit))
        return [_person(row) for row in rows]


class SqliteBatchStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, batch: Batch, idempotency_ttl_s: float) -> Batch:
        with self.db.transaction() as conn:
            if batch.idempotency_key is not None:
                row = conn.execute(
                    "SELECT * FROM batches WHERE tenant = ? AND idempotency_key = ?",
                    (batch.tenant, batch.idempotency_key),
                ).fetchone()
                if row is not None:
                    existing = _batch(row)
                    if existing.created_at > time.time() - idempotency_ttl_s:
                        raise BatchKeyTaken(existing)
                    conn.execute("UPDATE batches SET idempotency_key = NULL WHERE id = ?", (existing.id,))
            conn.execute(
                "INSERT INTO batches (id, tenant, status, created_at, finished_at, job_ids, category, output_format,"
                " person_id, person_prefix, shopper_id, callback_url, base_url, idempotency_key, request_hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    batch.id,
                    batch.tenant,
                    batch.status,
                    batch.created_at,
                    batch.finished_at,
                    json.dumps(list(batch.job_ids)),
                    batch.category,
                    batch.output_format,
                    batch.person_id,
                    batch.person_prefix,
                    batch.shopper_id,
                    batch.callback_url,
                    batch.base_url,
                    batch.idempotency_key,
                    batch.request_hash,
                ),
            )
        return batch

    def get(self, tenant: str, batch_id: str) -> Batch | None:
        rows = self.db.query("SELECT * FROM batches WHERE id = ? AND tenant = ?", (batch_id, tenant))
        return _batch(rows[0]) if rows else None

    def by_idempotency_key(self, tenant: str, key: str, ttl_s: float) -> Batch | None:
        rows = self.db.query(
            "SELECT * FROM batches WHERE tenant = ? AND idempotency_key = ? AND created_at > ?",
            (tenant, key, time.time() - ttl_s),
        )
        return _batch(rows[0]) if rows else None

    def finish(self, batch_id: str, webhook: BatchWebhookFor | None = None) -> Batch | None:
        with self.db.transaction() as conn:
            changed = conn.execute(
                "UPDATE batches SET status = 'finished', finished_at = ? WHERE id = ? AND status = 'running'",
                (time.time(), batch_id),
            ).rowcount
            if not changed:
                return None
            finished = _batch(conn.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone())
            delivery = webhook(finished) if webhook else None
            if delivery is not None:
                insert_delivery(conn, finished.id, finished.tenant, delivery)
        return finished

    def delete(self, tenant: str, batch_id: str) -> Batch | None:
        with self.db.transaction() as conn:
            row = conn.execute("SELECT * FROM batches WHERE id = ? AND tenant = ?", (batch_id, tenant)).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
        return _batch(row)

    def of_shopper(self, tenant: str, shopper_id: str) -> list[Batch]:
        rows = self.db.query("SELECT * FROM batches WHERE tenant = ? AND shopper_id = ?", (tenant, shopper_id))
        return [_batch(row) for row in rows]

    def finished_before(self, cutoff: float, limit: int = 100) -> list[Batch]:
        rows = self.db.query(
            "SELECT * FROM batches WHERE status = 'finished' AND finished_at < ? LIMIT ?", (cutoff, limit)
        )
        return [_batch(row) for row in rows]


def _person(row: sqlite3.Row) -> Person:
    return Person(
        id=row["id"],
        tenant=row["tenant"],
        person_prefix=row["person_prefix"],
        width=row["width"],
        height=row["height"],
        shopper_id=row["shopper_id"],
        created_at=row["created_at"],
    )


def _batch(row: sqlite3.Row) -> Batch:
    return Batch(
        id=row["id"],
        tenant=row["tenant"],
        job_ids=tuple(json.loads(row["job_ids"])),
        category=row["category"],
        output_format=row["output_format"],
        person_prefix=row["person_prefix"],
        base_url=row["base_url"],
        person_id=row["person_id"],
        shopper_id=row["shopper_id"],
        callback_url=row["callback_url"],
        idempotency_key=row["idempotency_key"],
        request_hash=row["request_hash"],
        status=row["status"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
    )
