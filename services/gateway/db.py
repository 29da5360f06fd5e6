"""The gateway's SQLite database in embedded mode: one file in the data directory, shared by the
job store, the garment registry, the API keys and the webhook outbox.

One connection per process, guarded by a lock: SQLite serialises writers anyway, and a single
connection keeps the worker threads, the request threads and the webhook thread from tripping
over each other's transactions. WAL lets the `fitroom keys` command write while a server runs.
The schema is versioned with PRAGMA user_version, so a later release migrates an existing file.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Append a migration to change the schema; never edit one that has shipped.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE tenants (
        id TEXT PRIMARY KEY,
        webhook_secret TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,              -- public key id, shown by `fitroom keys list`
        tenant TEXT NOT NULL REFERENCES tenants(id),
        key_hash TEXT NOT NULL UNIQUE,    -- sha256 of the whole key; the key itself is never stored
        name TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        category TEXT NOT NULL,           -- as asked: auto, upper, lower, dress
        detected_category TEXT,
        output_format TEXT NOT NULL,
        garment_id TEXT,                  -- a registered garment, or NULL when the job has its own
        person_prefix TEXT NOT NULL,      -- pipeline.person_prefix of the photo: its cached pose and parse
        shopper_id TEXT,
        callback_url TEXT,
        base_url TEXT NOT NULL,
        idempotency_key TEXT,
        request_hash TEXT,
        stages TEXT NOT NULL,             -- JSON {stage: {status, seconds}}
        error_code TEXT,
        error_message TEXT
    );
    CREATE UNIQUE INDEX jobs_idempotency ON jobs(tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
    CREATE INDEX jobs_status ON jobs(status, created_at);
    CREATE INDEX jobs_shopper ON jobs(tenant, shopper_id) WHERE shopper_id IS NOT NULL;
    CREATE TABLE garments (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        created_at REAL NOT NULL,
        category TEXT NOT NULL,           -- detected or given
        requested_category TEXT NOT NULL, -- auto, upper, lower, dress: the analysis cache key uses it
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        sku TEXT,
        cache_prefix TEXT NOT NULL        -- where the pipeline cached its analysis (erased with it)
    );
    CREATE INDEX garments_tenant ON garments(tenant, created_at, id);
    CREATE TABLE webhook_deliveries (
        id TEXT PRIMARY KEY,              -- the event id receivers deduplicate on
        job_id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        url TEXT NOT NULL,
        payload BLOB NOT NULL,
        status TEXT NOT NULL,             -- pending, delivered, failed
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error TEXT,
        created_at REAL NOT NULL,
        delivered_at REAL
    );
    CREATE INDEX webhook_due ON webhook_deliveries(status, next_attempt_at);
    CREATE INDEX webhook_job ON webhook_deliveries(job_id);
    """,
    # Garment analysis reports how sure `auto` was of the category (1 when it was given).
    "ALTER TABLE garments ADD COLUMN category_confidence REAL NOT NULL DEFAULT 1.0",
    # The storefront: registered shoppers' photos, batches of try-ons on one person, and what a job
    # keeps for GET /v1/tryon/{id}/intermediates/{name}.
    """
    ALTER TABLE jobs ADD COLUMN person_id TEXT;
    ALTER TABLE jobs ADD COLUMN batch_id TEXT;
    ALTER TABLE jobs ADD COLUMN intermediates INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE persons (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        created_at REAL NOT NULL,
        person_prefix TEXT NOT NULL,      -- pipeline.person_prefix of the photo: its cached pose and parse
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        shopper_id TEXT
    );
    CREATE INDEX persons_shopper ON persons(tenant, shopper_id) WHERE shopper_id IS NOT NULL;
    CREATE INDEX persons_created ON persons(created_at);
    CREATE TABLE batches (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        status TEXT NOT NULL,             -- running, finished
        created_at REAL NOT NULL,
        finished_at REAL,
        job_ids TEXT NOT NULL,            -- JSON array, in the request's order
        category TEXT NOT NULL,
        output_format TEXT NOT NULL,
        person_id TEXT,                   -- a registered person, or NULL when the batch has its own photo
        person_prefix TEXT NOT NULL,
        shopper_id TEXT,
        callback_url TEXT,
        base_url TEXT NOT NULL,
        idempotency_key TEXT,
        request_hash TEXT
    );
    CREATE UNIQUE INDEX batches_idempotency ON batches(tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
    CREATE INDEX batches_shopper ON batches(tenant, shopper_id) WHERE shopper_id IS NOT NULL;
    CREATE INDEX batches_finished ON batches(status, finished_at);
    """,
)


class Database:
    """A SQLite file with the gateway's schema, safe to share between threads.

    Writes go through one connection, one transaction at a time. Reads (`query`) use a connection of
    their thread's own: in WAL mode readers see the last commit and never wait for a writer or for
    each other (one shared connection made concurrent status reads queue behind one lock)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; `transaction()` opens them explicitly.
        self._conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        # It holds the tenants' webhook secrets (API keys only as hashes): owner-only, as are the
        # -wal and -shm files SQLite creates with the same mode.
        os.chmod(self.path, 0o600)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash
            self._migrate()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        reader: sqlite3.Connection | None = getattr(self._local, "reader", None)
        if reader is None:
            reader = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            reader.row_factory = sqlite3.Row
            self._local.reader = reader
            with self._lock:
                self._readers.append(reader)
        return reader.execute(sql, params).fetchall()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement in its own transaction; returns the number of rows changed."""
        with self.transaction() as conn:
            return conn.execute(sql, params).rowcount

    def ping(self) -> None:
        self.query("SELECT 1")

    def close(self) -> None:
        with self._lock:
            for reader in self._readers:
                reader.close()
            self._readers.clear()
            self._conn.close()

    def _migrate(self) -> None:
        # A server and a `fitroom keys` command may open a new file at the same moment: the file lock
        # makes the second one wait and then see the version the first one wrote.
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                # The migration and its version bump commit together.
                self._conn.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {number}; COMMIT;")
