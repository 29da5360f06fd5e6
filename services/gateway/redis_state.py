"""The gateway's state in Redis, for distributed mode: jobs, garments, API keys (webhook deliveries
are in redis_webhooks.py). Redis is the authority here, not Celery's result backend: every gateway
replica and every stage worker reads and writes these keys.

Keys, all under one prefix (default "fitroom:"):
    job:{job_id}                      hash: the Job's fields (absent field = None); "stage:{name}" holds
                                      {"status", "seconds"} as JSON, "stage_attempts:{name}" count_attempt's count
    jobs:unfinished                   sorted set of queued and running job ids, scored by created_at
    jobs:finished                     sorted set of finished job ids, scored by finished_at
    jobs:progress                     sorted set of unfinished job ids, scored by their last sign of life
                                      (created, a task started it, a stage moved): the reaper re-sends
                                      the next stage of a job silent too long (`claim_stalled`)
    jobs:counts                       hash: status -> number of jobs (kept in step by every script that moves one)
    idem:{tenant}:{idempotency key}   string: the job created under that key (it lives as long as that job)
    shopper:{tenant}:{shopper_id}     set of that shopper's job ids
    garment:{garment_id}              hash: the Garment's fields
    garments:{tenant}                 sorted set of the tenant's garment ids, scored by created_at (ties by id)
    tenant:{tenant}                   hash: webhook_secret, created_at
    apikey:{key_id}                   hash: id, tenant, key_hash (SHA-256; the key itself is never stored),
                                      name, created_at, revoked_at
    apikey_hash:{sha256 of the key}   string: the tenant of a live key (deleted on revoke): one GET per request
    apikeys                           sorted set of key ids, scored by created_at
    webhook:{event_id}, webhooks:due, webhooks:job:{job_id}   see redis_webhooks.py; written by
                                      `add_delivery`, which `finish` runs in the transaction that finishes a job

Every change that touches more than one key is one Lua script (or MULTI/EXEC), so a reader or a
racing writer never sees half of it. Scripts derive some keys from values they read (an old job's
hash, a shopper's set), which a single Redis or a primary with replicas allows but Redis Cluster
does not. Run Redis with AOF on and maxmemory-policy noeviction: this is authoritative state.

A Redis that cannot be reached (refused, timed out, loading, read-only, out of memory) surfaces as
QueueUnavailable (503, queue_unavailable), never as a raw redis exception.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ParamSpec, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from services.common.errors import QueueUnavailable
from services.gateway.jobs import (
    FINISHED,
    Garment,
    IdempotencyKeyTaken,
    Job,
    JobStatus,
    StageState,
    WebhookFor,
    known_stage,
)
from services.gateway.keys import (
    ApiKey,
    NewKey,
    check_tenant,
    hash_key,
    may_be_key,
    new_key,
    new_webhook_secret,
)
from services.gateway.webhooks import Webhook, new_event
from services.pipeline import STAGES

PREFIX = "fitroom:"

# What "Redis is unreachable" looks like: connection refused or lost, timeouts, a replica still
# loading or read-only after a failover, and a full Redis refusing writes.
UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
)

P = ParamSpec("P")
R = TypeVar("R")


def connect(url: str, timeout_s: float = 2.0) -> redis.Redis:
    """A client the stores accept: text replies, short timeouts, two quick retries of a lost connection
    (a pooled connection goes stale when Redis restarts). redis-py's default retries back off for seconds,
    and a request waiting on a dead Redis should get its 503 at once. Timeouts are not retried: the command
    may have run, and running a script twice would count an attempt twice or make the first writer of an
    outcome lose to itself."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2, supported_errors=(redis.exceptions.ConnectionError,)),
        health_check_interval=30,
    )


def unavailable_as_queue_error(method: Callable[P, R]) -> Callable[P, R]:
    """Redis being unreachable becomes QueueUnavailable."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except UNAVAILABLE as exc:
            raise QueueUnavailable(f"the state store (Redis) is unavailable: {type(exc).__name__}: {exc}") from exc

    return wrapper


def require_text_replies(client: redis.Redis) -> redis.Redis:
    if not client.get_connection_kwargs().get("decode_responses"):
        raise ValueError("the Redis client must decode replies (decode_responses=True, as connect() makes it)")
    return client


def as_dict(flat: Sequence[str] | None) -> dict[str, str]:
    """HGETALL's reply as a script returns it ([field, value, ...]) -> {field: value}."""
    items = iter(flat or ())
    return dict(zip(items, items, strict=True))


def number(value: float) -> str:
    """A float as Redis stores it: repr round-trips exactly (Lua's tonumber and sorted-set scores read it)."""
    return repr(float(value))


# --------------------------------------------------------------------------------------- jobs

# Moving a job between statuses keeps jobs:counts in step; every script that does uses this.
_MOVE = """
local function move(counts, from, to)
  if from then redis.call('HINCRBY', counts, from, -1) end
  if to then redis.call('HINCRBY', counts, to, 1) end
end
"""

# KEYS: job, unfinished, finished, counts, idempotency key ('' = none), shopper set ('' = none), progress
# ARGV: now, ttl_s, job key prefix, job id, status, created_at, field, value, ...
_CREATE_JOB = (
    _MOVE
    + """
if KEYS[5] ~= '' then
  local old = redis.call('GET', KEYS[5])
  if old then
    local created = redis.call('HGET', ARGV[3] .. old, 'created_at')
    if created and tonumber(created) > tonumber(ARGV[1]) - tonumber(ARGV[2]) then
      return {0, old}
    end
    redis.call('HDEL', ARGV[3] .. old, 'idempotency_key')  -- the old job gives up its key
  end
  redis.call('SET', KEYS[5], ARGV[4])
end
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.error_reply('job id taken: ' .. ARGV[4]) end
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
if ARGV[5] == 'queued' or ARGV[5] == 'running' then
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[4])
  redis.call('ZADD', KEYS[7], ARGV[6], ARGV[4])
else
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[4])
end
if KEYS[6] ~= '' then redis.call('SADD', KEYS[6], ARGV[4]) end
move(KEYS[4], nil, ARGV[5])
return {1, ARGV[4]}
"""
)

# KEYS: job, counts. ARGV: now, a pending stage's JSON, stage names...
_CLAIM = (
    _MOVE
    + """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return nil end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
for i = 3, #ARGV do
  redis.call('HSET', KEYS[1], 'stage:' .. ARGV[i], ARGV[2])
  redis.call('HDEL', KEYS[1], 'stage_attempts:' .. ARGV[i])
end
move(KEYS[2], 'queued', 'running')
return redis.call('HGETALL', KEYS[1])
"""
)

# KEYS: job, counts, progress. ARGV: now, job id
_START = (
    _MOVE
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'running' then return nil end
redis.call('HSET', KEYS[1], 'status', 'running')
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[2])
if status == 'queued' then move(KEYS[2], 'queued', 'running') end
return redis.call('HGETALL', KEYS[1])
"""
)

# KEYS: job. ARGV: stage
_COUNT_ATTEMPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HINCRBY', KEYS[1], 'stage_attempts:' .. ARGV[1], 1)
"""

# KEYS: job, progress. ARGV: stage, its {"status", "seconds"} JSON, now, job id. (HSET alone would bring a
# deleted job back.)
_SET_STAGE = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'stage:' .. ARGV[1], ARGV[2]) end
redis.call('ZADD', KEYS[2], 'XX', ARGV[3], ARGV[4])
return 0
"""

# KEYS: job, unfinished, finished, counts, progress. ARGV: job id, status, now, number of pairs n, n
# field/value pairs, then fields to delete.
_FINISH = (
    _MOVE
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'running' then return nil end
local pairs_end = 4 + 2 * tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', ARGV[3])
if pairs_end > 4 then redis.call('HSET', KEYS[1], unpack(ARGV, 5, pairs_end)) end
if #ARGV > pairs_end then redis.call('HDEL', KEYS[1], unpack(ARGV, pairs_end + 1)) end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
move(KEYS[4], status, ARGV[2])
return redis.call('HGETALL', KEYS[1])
"""
)

# KEYS: progress. ARGV: cutoff (exclusive, "(t"), now, limit
_CLAIM_STALLED = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""

# KEYS: job, counts
_REQUEUE = (
    _MOVE
    + """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued')
move(KEYS[2], 'running', 'queued')
return 1
"""
)

# KEYS: job, unfinished, finished, counts, progress. ARGV: tenant, key prefix
_DELETE_JOB = (
    _MOVE
    + """
local flat = redis.call('HGETALL', KEYS[1])
local job = {}
for i = 1, #flat, 2 do job[flat[i]] = flat[i + 1] end
if job.tenant ~= ARGV[1] then return nil end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], job.id)
redis.call('ZREM', KEYS[3], job.id)
redis.call('ZREM', KEYS[5], job.id)
move(KEYS[4], job.status, nil)
if job.idempotency_key then
  local idem = ARGV[2] .. 'idem:' .. job.tenant .. ':' .. job.idempotency_key
  if redis.call('GET', idem) == job.id then redis.call('DEL', idem) end
end
if job.shopper_id then redis.call('SREM', ARGV[2] .. 'shopper:' .. job.tenant .. ':' .. job.shopper_id, job.id) end
return flat
"""
)

_JOB_FLOATS = frozenset({"created_at", "started_at", "finished_at"})
_JOB_INTS = frozenset({"attempts"})
_JOB_BOOLS = frozenset({"intermediates"})


class RedisJobStore:
    """The JobStore protocol (services/gateway/jobs.py) over Redis; see the module docstring for the keys."""

    def __init__(self, client: redis.Redis, prefix: str = PREFIX) -> None:
        self.redis = require_text_replies(client)
        self.prefix = prefix
        self._unfinished = f"{prefix}jobs:unfinished"
        self._finished = f"{prefix}jobs:finished"
        self._counts = f"{prefix}jobs:counts"
        self._progress = f"{prefix}jobs:progress"
        script = client.register_script
        self._create, self._claim, self._start = script(_CREATE_JOB), script(_CLAIM), script(_START)
        self._count_attempt, self._set_stage = script(_COUNT_ATTEMPT), script(_SET_STAGE)
        self._finish, self._requeue, self._delete = script(_FINISH), script(_REQUEUE), script(_DELETE_JOB)
        self._claim_stalled = script(_CLAIM_STALLED)

    def _job_key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def _idempotency_key(self, tenant: str, key: str) -> str:
        return f"{self.prefix}idem:{tenant}:{key}"

    def _shopper_key(self, tenant: str, shopper_id: str) -> str:
        return f"{self.prefix}shopper:{tenant}:{shopper_id}"

    @unavailable_as_queue_error
    def create(self, job: Job, idempotency_ttl_s: float) -> Job:
        keys = [
            self._job_key(job.id),
            self._unfinished,
            self._finished,
            self._counts,
            "" if job.idempotency_key is None else self._idempotency_key(job.tenant, job.idempotency_key),
            "" if job.shopper_id is None else self._shopper_key(job.tenant, job.shopper_id),
            self._progress,
        ]
        fields = [item for pair in _job_fields(job).items() for item in pair]
        while True:
            args = [number(time.time()), number(idempotency_ttl_s), self._job_key(""), job.id, job.status]
            created, job_id = self._create(keys=keys, args=[*args, number(job.created_at), *fields])
            if created:
                return job
            existing = self._load(job_id)
            if existing is not None:
                raise IdempotencyKeyTaken(existing)
            # The job holding the key was deleted between the script and the read: try again.

    @unavailable_as_queue_error
    def get(self, tenant: str, job_id: str) -> Job | None:
        job = self._load(job_id)
        return job if job is not None and job.tenant == tenant else None

    @unavailable_as_queue_error
    def get_many(self, tenant: str, job_ids: Sequence[str]) -> list[Job]:
        return [job for job in self._load_many(job_ids) if job.tenant == tenant]

    @unavailable_as_queue_error
    def by_idempotency_key(self, tenant: str, key: str, ttl_s: float) -> Job | None:
        job_id = self.redis.get(self._idempotency_key(tenant, key))
        job = None if job_id is None else self._load(job_id)
        if job is None or job.tenant != tenant or job.created_at <= time.time() - ttl_s:
            return None
        return job

    @unavailable_as_queue_error
    def claim(self, job_id: str) -> Job | None:
        pending = _stage_value(StageState())
        flat = self._claim(keys=[self._job_key(job_id), self._counts], args=[number(time.time()), pending, *STAGES])
        return _job(as_dict(flat)) if flat else None

    @unavailable_as_queue_error
    def start(self, job_id: str) -> Job | None:
        keys = [self._job_key(job_id), self._counts, self._progress]
        flat = self._start(keys=keys, args=[number(time.time()), job_id])
        return _job(as_dict(flat)) if flat else None

    @unavailable_as_queue_error
    def count_attempt(self, job_id: str, stage: str) -> int:
        return int(self._count_attempt(keys=[self._job_key(job_id)], args=[known_stage(stage)]))

    @unavailable_as_queue_error
    def set_stage(self, job_id: str, stage: str, state: StageState) -> None:
        keys = [self._job_key(job_id), self._progress]
        self._set_stage(keys=keys, args=[known_stage(stage), _stage_value(state), number(time.time()), job_id])

    @unavailable_as_queue_error
    def finish(
        self,
        job_id: str,
        status: JobStatus,
        detected_category: str | None = None,
        error: tuple[str, str] | None = None,
        webhook: WebhookFor | None = None,
    ) -> Job | None:
        if status not in FINISHED:
            raise ValueError(f"a job finishes as one of {FINISHED}, not {status!r}")
        code, message = error if error else (None, None)
        outcome = {"detected_category": detected_category, "error_code": code, "error_message": message}
        present = [item for name, value in outcome.items() if value is not None for item in (name, value)]
        absent = [name for name, value in outcome.items() if value is None]
        job_key = self._job_key(job_id)
        keys = [job_key, self._unfinished, self._finished, self._counts, self._progress]
        # WATCH/MULTI: the webhook is built from the finished job (in Python) and queued in the same
        # EXEC as the finish, which a second writer in between (a reaper) aborts; then read again.
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(job_key)
                    fields = pipe.hgetall(job_key)
                    if fields.get("status") not in ("queued", "running"):
                        return None
                    now = time.time()
                    finished = dataclasses.replace(_job(fields), status=status, finished_at=now, **outcome)
                    delivery = webhook(finished) if webhook else None
                    pipe.multi()
                    args = [job_id, status, number(now), len(present) // 2, *present, *absent]
                    self._finish(keys=keys, args=args, client=pipe)
                    if delivery is not None:
                        add_delivery(pipe, finished.id, finished.tenant, delivery, self.prefix)
                    pipe.execute()
                    return finished
                except redis.WatchError:
                    continue

    @unavailable_as_queue_error
    def requeue(self, job_id: str) -> None:
        self._requeue(keys=[self._job_key(job_id), self._counts])

    @unavailable_as_queue_error
    def delete(self, tenant: str, job_id: str) -> Job | None:
        keys = [self._job_key(job_id), self._unfinished, self._finished, self._counts, self._progress]
        flat = self._delete(keys=keys, args=[tenant, self.prefix])
        return _job(as_dict(flat)) if flat else None

    def recover(self) -> list[str]:
        """Nothing to re-queue: in distributed mode the broker holds queued work (a job's tasks go back to
        their queue when a worker dies holding them), and the reaper fails jobs stuck past their deadline
        (unfinished_before). A gateway replica restarting must not queue other replicas' jobs twice."""
        return []

    @unavailable_as_queue_error
    def of_shopper(self, tenant: str, shopper_id: str) -> list[Job]:
        job_ids = sorted(self.redis.smembers(self._shopper_key(tenant, shopper_id)))
        return [job for job in self._load_many(job_ids) if job.tenant == tenant]

    @unavailable_as_queue_error
    def finished_before(self, cutoff: float, limit: int = 100) -> list[Job]:
        job_ids = self.redis.zrangebyscore(self._finished, "-inf", f"({number(cutoff)}", start=0, num=limit)
        return self._load_many(job_ids)

    @unavailable_as_queue_error
    def unfinished_before(self, cutoff: float, limit: int = 100) -> list[Job]:
        job_ids = self.redis.zrangebyscore(self._unfinished, "-inf", f"({number(cutoff)}", start=0, num=limit)
        return self._load_many(job_ids)

    @unavailable_as_queue_error
    def claim_stalled(self, cutoff: float, limit: int = 100) -> list[Job]:
        """Unfinished jobs with no sign of life since cutoff, longest silent first, each marked alive now in
        the same step, so that of several reapers only one sends a job's next task again (distributed mode:
        a job whose next task message was lost)."""
        job_ids = self._claim_stalled(keys=[self._progress], args=[f"({number(cutoff)}", number(time.time()), limit])
        return self._load_many(job_ids)

    @unavailable_as_queue_error
    def count_by_status(self) -> dict[str, int]:
        return {status: int(n) for status, n in self.redis.hgetall(self._counts).items() if int(n) > 0}

    def _load(self, job_id: str) -> Job | None:
        fields = self.redis.hgetall(self._job_key(job_id))
        return _job(fields) if fields else None

    def _load_many(self, job_ids: Iterable[str]) -> list[Job]:
        """The jobs in the order given, leaving out any deleted meanwhile."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self._job_key(job_id))
        return [_job(fields) for fields in pipe.execute() if fields]


def add_delivery(pipe: redis.client.Pipeline, job_id: str, tenant: str, webhook: Webhook, prefix: str = PREFIX) -> str:
    """Queue a webhook delivery as commands of the caller's MULTI (`finish` queues a job's this way;
    redis_webhooks.py reads and sends them); returns the event id."""
    event_id, payload = new_event(webhook.event)
    now = number(time.time())
    delivery = {
        "id": event_id,
        "job_id": job_id,
        "tenant": tenant,
        "url": webhook.url,
        "payload": payload.decode(),  # JSON as json.dumps writes it: ASCII
        "status": "pending",
        "attempts": "0",
        "created_at": now,
        "next_attempt_at": now,
    }
    pipe.hset(f"{prefix}webhook:{event_id}", mapping=delivery)
    pipe.zadd(f"{prefix}webhooks:due", {event_id: float(now)})
    pipe.zadd(f"{prefix}webhooks:job:{job_id}", {event_id: float(now)})
    return event_id


def _scalar_fields(record: Job | Garment) -> dict[str, str]:
    """A record's fields as hash fields, None ones left out."""
    values = {f.name: getattr(record, f.name) for f in dataclasses.fields(record) if f.name != "stages"}
    return {name: _text(value) for name, value in values.items() if value is not None}


def _job_fields(job: Job) -> dict[str, str]:
    fields = _scalar_fields(job)
    for name, state in job.stages.items():
        fields[f"stage:{name}"] = _stage_value(state)
        if state.attempts:
            fields[f"stage_attempts:{name}"] = str(state.attempts)
    return fields


def _stage_value(state: StageState) -> str:
    """The "stage:{name}" field: status and seconds (attempts have their own field, for HINCRBY)."""
    return json.dumps({"status": state.status, "seconds": state.seconds})


def _text(value: object) -> str:
    return number(value) if isinstance(value, float) else str(value)


def _job(fields: dict[str, str]) -> Job:
    values: dict[str, Any] = {}
    stages: dict[str, StageState] = {}
    for name, value in fields.items():
        if name.startswith("stage:"):
            stage = name.removeprefix("stage:")
            stages[stage] = StageState(**json.loads(value), attempts=int(fields.get(f"stage_attempts:{stage}", 0)))
        elif name.startswith("stage_attempts:"):
            continue  # read with its stage
        elif name in _JOB_FLOATS:
            values[name] = float(value)
        elif name in _JOB_INTS:
            values[name] = int(value)
        elif name in _JOB_BOOLS:
            values[name] = value == "True"  # as _text writes a bool
        else:
            values[name] = value
    # Hash fields come back in no set order; the API shows stages in pipeline order.
    ordered = {name: stages.pop(name) for name in STAGES if name in stages}
    return Job(**values, stages={**ordered, **stages})


# ----------------------------------------------------------------------------------- garments

# KEYS: garment, the tenant's garment set. ARGV: tenant
_DELETE_GARMENT = """
local flat = redis.call('HGETALL', KEYS[1])
local garment = {}
for i = 1, #flat, 2 do garment[flat[i]] = flat[i + 1] end
if garment.tenant ~= ARGV[1] then return nil end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], garment.id)
return flat
"""

_GARMENT_FLOATS = frozenset({"created_at", "category_confidence"})
_GARMENT_INTS = frozenset({"width", "height"})


class RedisGarmentRegistry:
    """The GarmentRegistry protocol over Redis. A sorted set orders members by score, then by member, which
    is exactly the (created_at, id) order pages follow."""

    def __init__(self, client: redis.Redis, prefix: str = PREFIX) -> None:
        self.redis = require_text_replies(client)
        self.prefix = prefix
        self._delete = client.register_script(_DELETE_GARMENT)

    def _garment_key(self, garment_id: str) -> str:
        return f"{self.prefix}garment:{garment_id}"

    def _tenant_key(self, tenant: str) -> str:
        return f"{self.prefix}garments:{tenant}"

    @unavailable_as_queue_error
    def add(self, garment: Garment) -> None:
        pipe = self.redis.pipeline(transaction=True)  # MULTI/EXEC: both or neither
        pipe.hset(self._garment_key(garment.id), mapping=_scalar_fields(garment))
        pipe.zadd(self._tenant_key(garment.tenant), {garment.id: garment.created_at})
        pipe.execute()

    @unavailable_as_queue_error
    def get(self, tenant: str, garment_id: str) -> Garment | None:
        fields = self.redis.hgetall(self._garment_key(garment_id))
        return _garment(fields) if fields and fields["tenant"] == tenant else None

    @unavailable_as_queue_error
    def list(self, tenant: str, limit: int, after: str | None = None) -> list[Garment]:
        first = 0
        if after is not None:
            rank = self.redis.zrank(self._tenant_key(tenant), after)
            if rank is None:
                return []  # as in SQLite: a cursor naming no garment of this tenant ends the listing
            first = int(rank) + 1
        garment_ids = self.redis.zrange(self._tenant_key(tenant), first, first + limit - 1)
        pipe = self.redis.pipeline(transaction=False)
        for garment_id in garment_ids:
            pipe.hgetall(self._garment_key(garment_id))
        return [_garment(fields) for fields in pipe.execute() if fields]

    @unavailable_as_queue_error
    def delete(self, tenant: str, garment_id: str) -> Garment | None:
        flat = self._delete(keys=[self._garment_key(garment_id), self._tenant_key(tenant)], args=[tenant])
        return _garment(as_dict(flat)) if flat else None


def _garment(fields: dict[str, str]) -> Garment:
    values: dict[str, Any] = {}
    for name, value in fields.items():
        if name in _GARMENT_FLOATS:
            values[name] = float(value)
        elif name in _GARMENT_INTS:
            values[name] = int(value)
        else:
            values[name] = value
    return Garment(**values)


# ----------------------------------------------------------------------------------- API keys

# KEYS: tenant, apikey, apikey_hash, apikeys. ARGV: tenant, a new webhook secret, now, key id, key hash, name
_CREATE_KEY = """
if redis.call('EXISTS', KEYS[2]) == 1 then return redis.error_reply('key id taken: ' .. ARGV[4]) end
redis.call('HSETNX', KEYS[1], 'webhook_secret', ARGV[2])
redis.call('HSETNX', KEYS[1], 'created_at', ARGV[3])
redis.call('HSET', KEYS[2], 'id', ARGV[4], 'tenant', ARGV[1], 'key_hash', ARGV[5], 'name', ARGV[6],
  'created_at', ARGV[3])
redis.call('SET', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[4])
return redis.call('HGET', KEYS[1], 'webhook_secret')
"""

# KEYS: apikey. ARGV: now, the apikey_hash key prefix
_REVOKE_KEY = """
local key_hash = redis.call('HGET', KEYS[1], 'key_hash')
if not key_hash or redis.call('HEXISTS', KEYS[1], 'revoked_at') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'revoked_at', ARGV[1])
redis.call('DEL', ARGV[2] .. key_hash)
return 1
"""

# KEYS: tenant. ARGV: the new secret
_ROTATE_SECRET = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'webhook_secret', ARGV[1])
return 1
"""


class RedisKeyStore:
    """The ApiKeyStore protocol (services/gateway/keys.py) over Redis; keys are stored only as SHA-256."""

    def __init__(self, client: redis.Redis, prefix: str = PREFIX) -> None:
        self.redis = require_text_replies(client)
        self.prefix = prefix
        self._all = f"{prefix}apikeys"
        self._create, self._revoke = client.register_script(_CREATE_KEY), client.register_script(_REVOKE_KEY)
        self._rotate = client.register_script(_ROTATE_SECRET)

    def _tenant_key(self, tenant: str) -> str:
        return f"{self.prefix}tenant:{tenant}"

    def _key_key(self, key_id: str) -> str:
        return f"{self.prefix}apikey:{key_id}"

    def _hash_key(self, key_hash: str) -> str:
        return f"{self.prefix}apikey_hash:{key_hash}"

    @unavailable_as_queue_error
    def create(self, tenant: str, name: str = "") -> NewKey:
        check_tenant(tenant)
        key_id, key = new_key()
        keys = [self._tenant_key(tenant), self._key_key(key_id), self._hash_key(hash_key(key)), self._all]
        args = [tenant, new_webhook_secret(), number(time.time()), key_id, hash_key(key), name]
        secret = self._create(keys=keys, args=args)
        return NewKey(key=key, id=key_id, tenant=tenant, webhook_secret=secret)

    @unavailable_as_queue_error
    def authenticate(self, key: str) -> str | None:
        if not may_be_key(key):
            return None
        return self.redis.get(self._hash_key(hash_key(key)))

    @unavailable_as_queue_error
    def revoke(self, key_id: str) -> bool:
        return bool(self._revoke(keys=[self._key_key(key_id)], args=[number(time.time()), self._hash_key("")]))

    @unavailable_as_queue_error
    def list(self, tenant: str | None = None) -> list[ApiKey]:
        pipe = self.redis.pipeline(transaction=False)
        for key_id in self.redis.zrange(self._all, 0, -1):
            pipe.hgetall(self._key_key(key_id))
        keys = [
            ApiKey(
                f["id"],
                f["tenant"],
                f["name"],
                float(f["created_at"]),
                float(f["revoked_at"]) if "revoked_at" in f else None,
            )
            for f in pipe.execute()
            if f
        ]
        return [k for k in keys if tenant is None or k.tenant == tenant]

    @unavailable_as_queue_error
    def webhook_secret(self, tenant: str) -> str | None:
        return self.redis.hget(self._tenant_key(tenant), "webhook_secret")

    @unavailable_as_queue_error
    def rotate_webhook_secret(self, tenant: str) -> str | None:
        secret = new_webhook_secret()
        return secret if self._rotate(keys=[self._tenant_key(tenant)], args=[secret]) else None
