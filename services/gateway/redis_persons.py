"""The storefront's state in Redis, for distributed mode: the PersonRegistry and BatchStore protocols
of persons.py, with the same semantics as their SQLite versions.

Keys (under the prefix of redis_state.py):
    person:{person_id}                     hash: the Person's fields
    persons:created                        sorted set of person ids, scored by created_at (retention)
    persons:shopper:{tenant}:{shopper_id}  set of that shopper's person ids
    batch:{batch_id}                       hash: the Batch's fields ("job_ids" a JSON array)
    batches:finished                       sorted set of finished batch ids, scored by finished_at
    batches:shopper:{tenant}:{shopper_id}  set of that shopper's batch ids
    idem_batch:{tenant}:{idempotency key}  string: the batch created under that key

A batch's webhook is queued with `add_delivery` in the MULTI that finishes it (WATCH on its hash:
a second writer in between aborts it, and then finds it finished), as a job's is.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import redis

from services.gateway.persons import Batch, BatchKeyTaken, BatchWebhookFor, Person
from services.gateway.redis_state import (
    PREFIX,
    add_delivery,
    as_dict,
    number,
    require_text_replies,
    unavailable_as_queue_error,
)

# KEYS: person, created, shopper set ('' = none). ARGV: person id, created_at, field, value, ...
_ADD_PERSON = """
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
if KEYS[3] ~= '' then redis.call('SADD', KEYS[3], ARGV[1]) end
return 1
"""

# KEYS: person, created. ARGV: tenant, key prefix
_DELETE_PERSON = """
local flat = redis.call('HGETALL', KEYS[1])
local person = {}
for i = 1, #flat, 2 do person[flat[i]] = flat[i + 1] end
if person.tenant ~= ARGV[1] then return nil end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], person.id)
if person.shopper_id then
  redis.call('SREM', ARGV[2] .. 'persons:shopper:' .. person.tenant .. ':' .. person.shopper_id, person.id)
end
return flat
"""

# KEYS: batch, idempotency key ('' = none), shopper set ('' = none)
# ARGV: now, ttl_s, batch key prefix, batch id, field, value, ...
_CREATE_BATCH = """
if KEYS[2] ~= '' then
  local old = redis.call('GET', KEYS[2])
  if old then
    local created = redis.call('HGET', ARGV[3] .. old, 'created_at')
    if created and tonumber(created) > tonumber(ARGV[1]) - tonumber(ARGV[2]) then
      return {0, old}
    end
    redis.call('HDEL', ARGV[3] .. old, 'idempotency_key')
  end
  redis.call('SET', KEYS[2], ARGV[4])
end
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.error_reply('batch id taken: ' .. ARGV[4]) end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
if KEYS[3] ~= '' then redis.call('SADD', KEYS[3], ARGV[4]) end
return {1, ARGV[4]}
"""

# KEYS: batch, finished. ARGV: tenant, key prefix
_DELETE_BATCH = """
local flat = redis.call('HGETALL', KEYS[1])
local batch = {}
for i = 1, #flat, 2 do batch[flat[i]] = flat[i + 1] end
if batch.tenant ~= ARGV[1] then return nil end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], batch.id)
if batch.idempotency_key then
  local idem = ARGV[2] .. 'idem_batch:' .. batch.tenant .. ':' .. batch.idempotency_key
  if redis.call('GET', idem) == batch.id then redis.call('DEL', idem) end
end
if batch.shopper_id then
  redis.call('SREM', ARGV[2] .. 'batches:shopper:' .. batch.tenant .. ':' .. batch.shopper_id, batch.id)
end
return flat
"""


class RedisPersonRegistry:
    def __init__(self, client: redis.Redis, prefix: str = PREFIX) -> None:
        self.redis = require_text_replies(client)
        self.prefix = prefix
        self._created = f"{prefix}persons:created"
        self._add, self._delete = client.register_script(_ADD_PERSON), client.register_script(_DELETE_PERSON)

    def _key(self, person_id: str) -> str:
        return f"{self.prefix}person:{person_id}"

    def _shopper_key(self, tenant: str, shopper_id: str) -> str:
        return f"{self.prefix}persons:shopper:{tenant}:{shopper_id}"

    @unavailable_as_queue_error
    def add(self, person: Person) -> None:
        shopper = "" if person.shopper_id is None else self._shopper_key(person.tenant, person.shopper_id)
        fields = [item for pair in _fields(person).items() for item in pair]
        self._add(
            keys=[self._key(person.id), self._created, shopper], args=[person.id, number(person.created_at), *fields]
        )

    @unavailable_as_queue_error
    def get(self, tenant: str, person_id: str) -> Person | None:
        fields = self.redis.hgetall(self._key(person_id))
        return _person(fields) if fields and fields["tenant"] == tenant else None

    @unavailable_as_queue_error
    def delete(self, tenant: str, person_id: str) -> Person | None:
        flat = self._delete(keys=[self._key(person_id), self._created], args=[tenant, self.prefix])
        return _person(as_dict(flat)) if flat else None

    @unavailable_as_queue_error
    def of_shopper(self, tenant: str, shopper_id: str) -> list[Person]:
        ids = sorted(self.redis.smembers(self._shopper_key(tenant, shopper_id)))
        return [p for p in self._load_many(ids) if p.tenant == tenant]

    @unavailable_as_queue_error
    def created_before(self, cutoff: float, limit: int = 100) -> list[Person]:
        ids = self.redis.zrangebyscore(self._created, "-inf", f"({number(cutoff)}", start=0, num=limit)
        return self._load_many(ids)

    def _load_many(self, ids: list[str]) -> list[Person]:
        pipe = self.redis.pipeline(transaction=False)
        for person_id in ids:
            pipe.hgetall(self._key(person_id))
        return [_person(fields) for fields in pipe.execute() if fields]


class RedisBatchStore:
    def __init__(self, client: redis.Redis, prefix: str = PREFIX) -> None:
        self.redis = require_text_replies(client)
        self.prefix = prefix
        self._finished = f"{prefix}batches:finished"
        self._create, self._delete = client.register_script(_CREATE_BATCH), client.register_script(_DELETE_BATCH)

    def _key(self, batch_id: str) -> str:
        return f"{self.prefix}batch:{batch_id}"

    def _shopper_key(self, tenant: str, shopper_id: str) -> str:
        return f"{self.prefix}batches:shopper:{tenant}:{shopper_id}"

    def _idempotency_key(self, tenant: str, key: str) -> str:
        return f"{self.prefix}idem_batch:{tenant}:{key}"

    @unavailable_as_queue_error
    def create(self, batch: Batch, idempotency_ttl_s: float) -> Batch:
        keys = [
            self._key(batch.id),
            "" if batch.idempotency_key is None else self._idempotency_key(batch.tenant, batch.idempotency_key),
            "" if batch.shopper_id is None else self._shopper_key(batch.tenant, batch.shopper_id),
        ]
        fields = [item for pair in _fields(batch).items() for item in pair]
        while True:
            args = [number(time.time()), number(idempotency_ttl_s), self._key(""), batch.id, *fields]
            created, batch_id = self._create(keys=keys, args=args)
            if created:
                return batch
            existing = self._load(batch_id)
            if existing is not None:
                raise BatchKeyTaken(existing)
            # The batch holding the key was deleted between the script and the read: try again.

    @unavailable_as_queue_error
    def get(self, tenant: str, batch_id: str) -> Batch | None:
        batch = self._load(batch_id)
        return batch if batch is not None and batch.tenant == tenant else None

    @unavailable_as_queue_error
    def by_idempotency_key(self, tenant: str, key: str, ttl_s: float) -> Batch | None:
        batch_id = self.redis.get(self._idempotency_key(tenant, key))
        batch = None if batch_id is None else self._load(batch_id)
        if batch is None or batch.tenant != tenant or batch.created_at <= time.time() - ttl_s:
            return None
        return batch

    @unavailable_as_queue_error
    def finish(self, batch_id: str, webhook: BatchWebhookFor | None = None) -> Batch | None:
        key = self._key(batch_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    fields = pipe.hgetall(key)
                    if fields.get("status") != "running":
                        return None
                    now = time.time()
                    finished = dataclasses.replace(_batch(fields), status="finished", finished_at=now)
                    delivery = webhook(finished) if webhook else None
                    pipe.multi()
                    pipe.hset(key, mapping={"status": "finished", "finished_at": number(now)})
                    pipe.zadd(self._finished, {batch_id: now})
                    if delivery is not None:
                        add_delivery(pipe, finished.id, finished.tenant, delivery, self.prefix)
                    pipe.execute()
                    return finished
                except redis.WatchError:
                    continue

    @unavailable_as_queue_error
    def delete(self, tenant: str, batch_id: str) -> Batch | None:
        flat = self._delete(keys=[self._key(batch_id), self._finished], args=[tenant, self.prefix])
        return _batch(as_dict(flat)) if flat else None

    @unavailable_as_queue_error
    def of_shopper(self, tenant: str, shopper_id: str) -> list[Batch]:
        ids = sorted(self.redis.smembers(self._shopper_key(tenant, shopper_id)))
        return [b for b in self._load_many(ids) if b.tenant == tenant]

    @unavailable_as_queue_error
    def finished_before(self, cutoff: float, limit: int = 100) -> list[Batch]:
        ids = self.redis.zrangebyscore(self._finished, "-inf", f"({number(cutoff)}", start=0, num=limit)
        return self._load_many(ids)

    def _load(self, batch_id: str) -> Batch | None:
        fields = self.redis.hgetall(self._key(batch_id))
        return _batch(fields) if fields else None

    def _load_many(self, ids: list[str]) -> list[Batch]:
        pipe = self.redis.pipeline(transaction=False)
        for batch_id in ids:
            pipe.hgetall(self._key(batch_id))
        return [_batch(fields) for fields in pipe.execute() if fields]


def _fields(record: Person | Batch) -> dict[str, str]:
    """A record's fields as hash fields, None ones left out (floats as repr, job ids as JSON)."""
    values: dict[str, str] = {}
    for f in dataclasses.fields(record):
        value: Any = getattr(record, f.name)
        if value is None:
            continue
        if isinstance(value, tuple):
            values[f.name] = json.dumps(list(value))
        elif isinstance(value, float):
            values[f.name] = number(value)
        else:
            values[f.name] = str(value)
    return values


def _person(fields: dict[str, str]) -> Person:
    return Person(
        id=fields["id"],
        tenant=fields["tenant"],
        person_prefix=fields["person_prefix"],
        width=int(fields["width"]),
        height=int(fields["height"]),
        shopper_id=fields.get("shopper_id"),
        created_at=float(fields["created_at"]),
    )


def _batch(fields: dict[str, str]) -> Batch:
    finished_at = fields.get("finished_at")
    return Batch(
        id=fields["id"],
        tenant=fields["tenant"],
        job_ids=tuple(json.loads(fields["job_ids"])),
        category=fields["category"],  # type: ignore[arg-type]
        output_format=fields["output_format"],  # type: ignore[arg-type]
        person_prefix=fields["person_prefix"],
        base_url=fields["base_url"],
        person_id=fields.get("person_id"),
        shopper_id=fields.get("shopper_id"),
        callback_url=fields.get("callback_url"),
        idempotency_key=fields.get("idempotency_key"),
        request_hash=fields.get("request_hash"),
        status=fields["status"],  # type: ignore[arg-type]
        created_at=float(fields["created_at"]),
        finished_at=None if finished_at is None else float(finished_at),
    )
