"""Job state and the garment registry: what the gateway remembers between requests.

`JobStore` and `GarmentRegistry` are the seams for the distributed mode: the SQLite
implementations here serve embedded mode and survive a restart; services/gateway/redis_state.py
holds the Redis ones, with the same semantics. Every read a request makes is scoped by tenant,
so another tenant's job or garment is simply not found.

Two ways to run a job: embedded mode's worker `claim`s it (queued only, stages reset), while a
distributed stage task `start`s it (queued or running, so a redelivered task resumes it) and
counts its own attempts with `count_attempt`. `finish` is first-writer-wins: a reaper failing a
late job and the worker finishing it may race, and only one outcome (and one webhook) counts.
`finish` also queues the job's webhook in the same transaction, so a crash or an outage can never
leave a finished job whose webhook was not queued.
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, Protocol

from services.gateway.db import Database
from services.gateway.webhooks import Webhook, insert_delivery
from services.pipeline import STAGES

JobStatus = Literal["queued", "running", "succeeded", "failed"]
StageStatus = Literal["pending", "running", "done", "cached", "failed"]
CategoryChoice = Literal["auto", "upper", "lower", "dress"]
OutputFormat = Literal["jpeg", "png"]
FINISHED: tuple[JobStatus, ...] = ("succeeded", "failed")

# Ids carry 128 random bits: unguessable, and the type is readable in logs ("job_", "gar_", "per_").


def new_id(kind: str) -> str:
    """A new id of that kind: "job", "gar" (garment), "per" (person), "bat" (batch)."""
    return f"{kind}_{secrets.token_hex(16)}"


def is_id(kind: str, value: str) -> bool:
    """Whether `value` is shaped as an id of that kind (says nothing of whether it exists)."""
    return re.fullmatch(rf"{kind}_[0-9a-f]{{32}}", value) is not None


new_job_id = partial(new_id, "job")
new_garment_id = partial(new_id, "gar")
is_job_id = partial(is_id, "job")
is_garment_id = partial(is_id, "gar")


@dataclass(frozen=True)
class StageState:
    status: StageStatus = "pending"
    seconds: float | None = None
    # Times a task started this stage (count_attempt); set_stage leaves it as it is.
    attempts: int = 0


def pending_stages() -> dict[str, StageState]:
    return {stage: StageState() for stage in STAGES}


@dataclass(frozen=True)
class Job:
    id: str
    tenant: str
    category: CategoryChoice
    output_format: OutputFormat
    person_prefix: str
    base_url: str
    garment_id: str | None = None  # None: the job carries its own garment image
    shopper_id: str | None = None
    callback_url: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    status: JobStatus = "queued"
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0  # times a worker started it; over 1 after a restart re-queued it
    detected_category: str | None = None
    stages: dict[str, StageState] = field(default_factory=pending_stages)
    error_code: str | None = None
    error_message: str | None = None
    person_id: str | None = None  # a registered person (POST /v1/persons) instead of its own photo
    batch_id: str | None = None  # the batch it belongs to (POST /v1/tryon/batch)
    intermediates: bool = False  # keep pose, parse and warped garment for GET .../intermediates/{name}

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def owns_person_cache(self) -> bool:
        """Whether the cached pose and parse of its photo go with it. A registered person's belong to
        the person, a batch's photo's to the batch: erasing one of their jobs must leave them."""
        return self.person_id is None and self.batch_id is None


@dataclass(frozen=True)
class Garment:
    id: str
    tenant: str
    category: str
    requested_category: CategoryChoice
    width: int
    height: int
    cache_prefix: str  # the pipeline's cached analysis of the image, erased with the garment
    sku: str | None = None
    category_confidence: float = 1.0  # how sure `auto` was (1 when the category was given)
    created_at: float = field(default_factory=time.time)


# Given the finished job, the webhook to queue with it (None: it has no callback_url).
WebhookFor = Callable[[Job], Webhook | None]


class IdempotencyKeyTaken(Exception):
    """create() found a live job under the same tenant and Idempotency-Key."""

    def __init__(self, existing: Job) -> None:
        super().__init__(existing.id)
        self.existing = existing


class JobStore(Protocol):
    def create(self, job: Job, idempotency_ttl_s: float) -> Job:
        """Insert a queued job; IdempotencyKeyTaken when the key names a job younger than the ttl
        (an older one gives up its key)."""
        ...

    def get(self, tenant: str, job_id: str) -> Job | None: ...

    def get_many(self, tenant: str, job_ids: Sequence[str]) -> list[Job]:
        """The tenant's jobs among job_ids, in that order (deleted ones left out)."""
        ...

    def by_idempotency_key(self, tenant: str, key: str, ttl_s: float) -> Job | None:
        """The job made under this key within the last ttl_s seconds."""
        ...

    def claim(self, job_id: str) -> Job | None:
        """queued -> running for an embedded worker, stages reset to pending; None when the job is gone or
        not queued."""
        ...

    def start(self, job_id: str) -> Job | None:
        """queued or running -> running for a distributed task that begins or, after a crash, resumes the job:
        started_at is set the first time, attempts counts every call; None when the job is gone or finished."""
        ...

    def count_attempt(self, job_id: str, stage: str) -> int:
        """One more start of `stage` of this job; returns how many there have been (0: no such job)."""
        ...

    def set_stage(self, job_id: str, stage: str, state: StageState) -> None:
        """The stage's status and seconds (its attempts are count_attempt's); nothing when the job is gone."""
        ...

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        detected_category: str | None = None,
        error: tuple[str, str] | None = None,
        webhook: WebhookFor | None = None,
    ) -> Job | None:
        """Record the outcome of a job that exists and is not finished yet, and queue `webhook(job)` in the
        same transaction; returns the finished job, or None when it was deleted or finished by someone else
        meanwhile (the first writer wins, and only its webhook is queued)."""
        ...

    def requeue(self, job_id: str) -> None:
        """running -> queued, for a job that a stopping worker did not finish."""
        ...

    def delete(self, tenant: str, job_id: str) -> Job | None: ...

    def recover(self) -> list[str]:
        """At start: jobs left running by a crash are queued again; returns every queued job id, oldest first."""
        ...

    def of_shopper(self, tenant: str, shopper_id: str) -> list[Job]: ...

    def finished_before(self, cutoff: float, limit: int = 100) -> list[Job]:
        """Jobs finished before cutoff, in no particular order (the janitor erases them all)."""
        ...

    def unfinished_before(self, cutoff: float, limit: int = 100) -> list[Job]:
        """Queued or running jobs created before cutoff, oldest first (a reaper fails those past their deadline)."""
        ...

    def count_by_status(self) -> dict[str, int]: ...


class GarmentRegistry(Protocol):
    def add(self, garment: Garment) -> None: ...

    def get(self, tenant: str, garment_id: str) -> Garment | None: ...

    def list(self, tenant: str, limit: int, after: str | None = None) -> list[Garment]:
        """Oldest first; `after` is the id of the last garment of the previous page."""
        ...

    def delete(self, tenant: str, garment_id: str) -> Garment | None: ...


class SqliteJobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, job: Job, idempotency_ttl_s: float) -> Job:
        with self.db.transaction() as conn:
            if job.idempotency_key is not None:
                row = conn.execute(
                    "SELECT * FROM jobs WHERE tenant = ? AND idempotency_key = ?", (job.tenant, job.idempotency_key)
                ).fetchone()
                if row is not None:
                    existing = _job(row)
                    if existing.created_at > time.time() - idempotency_ttl_s:
                        raise IdempotencyKeyTaken(existing)
                    conn.execute("UPDATE jobs SET idempotency_key = NULL WHERE id = ?", (existing.id,))
            conn.execute(
                "INSERT INTO jobs (id, tenant, status, created_at, category, output_format, garment_id, person_prefix,"
                " shopper_id, callback_url, base_url, idempotency_key, request_hash, stages, person_id, batch_id,"
                " intermediates) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.tenant,
                    job.status,
                    job.created_at,
                    job.category,
                    job.output_format,
                    job.garment_id,
                    job.person_prefix,
                    job.shopper_id,
                    job.callback_url,
                    job.base_url,
                    job.idempotency_key,
                    job.request_hash,
                    _stages_json(job.stages),
                    job.person_id,
                    job.batch_id,
                    int(job.intermediates),
                ),
            )
        return job

    def get(self, tenant: str, job_id: str) -> Job | None:
        rows = self.db.query("SELECT * FROM jobs WHERE id = ? AND tenant = ?", (job_id, tenant))
        return _job(rows[0]) if rows else None

    def get_many(self, tenant: str, job_ids: Sequence[str]) -> list[Job]:
        found: dict[str, Job] = {}
        for start in range(0, len(job_ids), 500):  # under SQLite's limit on bound parameters
            chunk = list(job_ids[start : start + 500])
            marks = ", ".join("?" * len(chunk))
            rows = self.db.query(f"SELECT * FROM jobs WHERE tenant = ? AND id IN ({marks})", (tenant, *chunk))
            found.update((row["id"], _job(row)) for row in rows)
        return [found[job_id] for job_id in job_ids if job_id in found]

    def by_idempotency_key(self, tenant: str, key: str, ttl_s: float) -> Job | None:
        rows = self.db.query(
            "SELECT * FROM jobs WHERE tenant = ? AND idempotency_key = ? AND created_at > ?",
            (tenant, key, time.time() - ttl_s),
        )
        return _job(rows[0]) if rows else None

    def claim(self, job_id: str) -> Job | None:
        with self.db.transaction() as conn:
            changed = conn.execute(
                "UPDATE jobs SET status = 'running', started_at = ?, attempts = attempts + 1, stages = ?"
                " WHERE id = ? AND status = 'queued'",
                (time.time(), _stages_json(pending_stages()), job_id),
            ).rowcount
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if changed else None

    def start(self, job_id: str) -> Job | None:
        with self.db.transaction() as conn:
            changed = conn.execute(
                "UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, ?), attempts = attempts + 1"
                " WHERE id = ? AND status IN ('queued', 'running')",
                (time.time(), job_id),
            ).rowcount
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if changed else None

    def count_attempt(self, job_id: str, stage: str) -> int:
        path = f"$.{known_stage(stage)}.attempts"
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET stages = json_set(stages, ?, COALESCE(json_extract(stages, ?), 0) + 1) WHERE id = ?",
                (path, path, job_id),
            )
            row = conn.execute("SELECT json_extract(stages, ?) FROM jobs WHERE id = ?", (path, job_id)).fetchone()
        return int(row[0]) if row else 0

    def set_stage(self, job_id: str, stage: str, state: StageState) -> None:
        # json_set updates one stage in place, so concurrent readers never see a half-written map.
        stage = known_stage(stage)
        self.db.execute(
            "UPDATE jobs SET stages = json_set(stages, ?, ?, ?, ?) WHERE id = ?",
            (f"$.{stage}.status", state.status, f"$.{stage}.seconds", state.seconds, job_id),
        )

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        detected_category: str | None = None,
        error: tuple[str, str] | None = None,
        webhook: WebhookFor | None = None,
    ) -> Job | None:
        code, message = error if error else (None, None)
        with self.db.transaction() as conn:
            changed = conn.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, detected_category = ?, error_code = ?, error_message = ?"
                " WHERE id = ? AND status NOT IN ('succeeded', 'failed')",
                (status, time.time(), detected_category, code, message, job_id),
            ).rowcount
            if not changed:
                return None
            finished = _job(conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())
            delivery = webhook(finished) if webhook else None
            if delivery is not None:
                insert_delivery(conn, finished.id, finished.tenant, delivery)
        return finished

    def requeue(self, job_id: str) -> None:
        self.db.execute("UPDATE jobs SET status = 'queued' WHERE id = ? AND status = 'running'", (job_id,))

    def delete(self, tenant: str, job_id: str) -> Job | None:
        with self.db.transaction() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ? AND tenant = ?", (job_id, tenant)).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return _job(row)

    def recover(self) -> list[str]:
        with self.db.transaction() as conn:
            conn.execute("UPDATE jobs SET status = 'queued' WHERE status = 'running'")
            rows = conn.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at, id").fetchall()
        return [row["id"] for row in rows]

    def of_shopper(self, tenant: str, shopper_id: str) -> list[Job]:
        rows = self.db.query("SELECT * FROM jobs WHERE tenant = ? AND shopper_id = ?", (tenant, shopper_id))
        return [_job(row) for row in rows]

    def finished_before(self, cutoff: float, limit: int = 100) -> list[Job]:
        rows = self.db.query(
            "SELECT * FROM jobs WHERE status IN ('succeeded', 'failed') AND finished_at < ? LIMIT ?", (cutoff, limit)
        )
        return [_job(row) for row in rows]

    def unfinished_before(self, cutoff: float, limit: int = 100) -> list[Job]:
        rows = self.db.query(
            "SELECT * FROM jobs WHERE status IN ('queued', 'running') AND created_at < ? ORDER BY created_at, id"
            " LIMIT ?",
            (cutoff, limit),
        )
        return [_job(row) for row in rows]

    def count_by_status(self) -> dict[str, int]:
        rows = self.db.query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
        return {row["status"]: row["n"] for row in rows}


class SqliteGarmentRegistry:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, garment: Garment) -> None:
        self.db.execute(
            "INSERT INTO garments (id, tenant, created_at, category, requested_category, width, height, sku,"
            " cache_prefix, category_confidence) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                garment.id,
                garment.tenant,
                garment.created_at,
                garment.category,
                garment.requested_category,
                garment.width,
                garment.height,
                garment.sku,
                garment.cache_prefix,
                garment.category_confidence,
            ),
        )

    def get(self, tenant: str, garment_id: str) -> Garment | None:
        rows = self.db.query("SELECT * FROM garments WHERE id = ? AND tenant = ?", (garment_id, tenant))
        return _garment(rows[0]) if rows else None

    def list(self, tenant: str, limit: int, after: str | None = None) -> list[Garment]:
        if after is None:
            rows = self.db.query(
                "SELECT * FROM garments WHERE tenant = ? ORDER BY created_at, id LIMIT ?", (tenant, limit)
            )
        else:
            rows = self.db.query(
                "SELECT g.* FROM garments g JOIN garments a ON a.id = ? AND a.tenant = g.tenant"
                " WHERE g.tenant = ? AND (g.created_at, g.id) > (a.created_at, a.id)"
                " ORDER BY g.created_at, g.id LIMIT ?",
                (after, tenant, limit),
            )
        return [_garment(row) for row in rows]

    def delete(self, tenant: str, garment_id: str) -> Garment | None:
        with self.db.transaction() as conn:
            row = conn.execute("SELECT * FROM garments WHERE id = ? AND tenant = ?", (garment_id, tenant)).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM garments WHERE id = ?", (garment_id,))
        return _garment(row)


def known_stage(stage: str) -> str:
    """`stage` itself, when it is one (it becomes part of a JSON path or a Redis field name)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: one of {', '.join(STAGES)}")
    return stage


def _stage_json(state: StageState) -> dict[str, object]:
    """A stage as stored: {"status", "seconds", "attempts"} (older SQLite rows lack "attempts")."""
    return {"status": state.status, "seconds": state.seconds, "attempts": state.attempts}


def _stages_json(stages: dict[str, StageState]) -> str:
    return json.dumps({name: _stage_json(state) for name, state in stages.items()})


def _job(row: sqlite3.Row) -> Job:
    stages = {name: StageState(**state) for name, state in json.loads(row["stages"]).items()}
    return Job(
        id=row["id"],
        tenant=row["tenant"],
        category=row["category"],
        output_format=row["output_format"],
        person_prefix=row["person_prefix"],
        base_url=row["base_url"],
        garment_id=row["garment_id"],
        shopper_id=row["shopper_id"],
        callback_url=row["callback_url"],
        idempotency_key=row["idempotency_key"],
        request_hash=row["request_hash"],
        status=row["status"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        attempts=row["attempts"],
        detected_category=row["detected_category"],
        stages=stages,
        error_code=row["error_code"],
        error_message=row["error_message"],
        person_id=row["person_id"],
        batch_id=row["batch_id"],
        intermediates=bool(row["intermediates"]),
    )


def _garment(row: sqlite3.Row) -> Garment:
    return Garment(
        id=row["id"],
        tenant=row["tenant"],
        category=row["category"],
        requested_category=row["requested_category"],
        width=row["width"],
        height=row["height"],
        cache_prefix=row["cache_prefix"],
        sku=row["sku"],
        created_at=row["created_at"],
        category_confidence=row["category_confidence"],
    )
