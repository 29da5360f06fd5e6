"""The webhook outbox in Redis, for distributed mode: any process queues a delivery (a stage worker
that finished the job calls `queue_webhook`), every gateway replica runs a dispatcher.

Keys (under the prefix of redis_state.py):
    webhook:{event_id}        hash: id, job_id, tenant, url, payload, status, attempts, last_error,
                              created_at, next_attempt_at, delivered_at, lease (the dispatcher holding it)
    webhooks:due              sorted set of pending event ids, scored by when they fall due
    webhooks:job:{job_id}     sorted set of the job's event ids, scored by created_at

Claiming is one script: the due ids get the claiming dispatcher's name as their lease and their
score moves to now + lease_s, so no other dispatcher sees them until the lease runs out. The
result is recorded only by the lease's holder; a dispatcher that dies mid-send leaves its
deliveries to whoever claims them after the lease (at least once: the receiver may see one twice).
The lease must outlast a send, so it is the webhook timeout plus a margin, and a dispatcher claims
no more than its free senders can start at once.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Set
from typing import Any

import redis

from services.common.config import Settings
from services.gateway.fetch import SafeFetcher
from services.gateway.keys import ApiKeyStore
from services.gateway.metrics import Metrics
from services.gateway.redis_state import (
    PREFIX,
    add_delivery,
    number,
    require_text_replies,
    unavailable_as_queue_error,
)
from services.gateway.webhooks import Attempted, Delivery, DeliveryState, Dispatcher, Webhook

LEASE_MARGIN_S = 30.0

# KEYS: due. ARGV: now, lease end, limit, owner, webhook key prefix
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
  redis.call('HSET', ARGV[5] .. id, 'lease', ARGV[4])
end
return ids
"""

# KEYS: delivery, due. ARGV: owner, id, status, attempts, at, next attempt at, last error ('' with ARGV[8] = '0')
_RECORD = """
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'status') ~= 'pending' then
  return 0  -- erased, or the lease ran out and another dispatcher holds it now
end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'attempts', ARGV[4], 'next_attempt_at', ARGV[6])
redis.call('HDEL', KEYS[1], 'lease')
if ARGV[8] == '1' then
  redis.call('HSET', KEYS[1], 'last_error', ARGV[7])
else
  redis.call('HDEL', KEYS[1], 'last_error')
end
if ARGV[3] == 'delivered' then redis.call('HSET', KEYS[1], 'delivered_at', ARGV[5]) end
if ARGV[3] == 'pending' then redis.call('ZADD', KEYS[2], ARGV[6], ARGV[2]) else redis.call('ZREM', KEYS[2], ARGV[2]) end
return 1
"""

# KEYS: the job's set, due. ARGV: webhook key prefix
_DELETE_FOR_JOB = """
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  redis.call('DEL', ARGV[1] .. id)
  redis.call('ZREM', KEYS[2], id)
end
redis.call('DEL', KEYS[1])
return 0
"""


@unavailable_as_queue_error
def queue_webhook(
    client: redis.Redis, job_id: str, tenant: str, url: str, event: dict[str, Any], prefix: str = PREFIX
) -> str:
    """Queue `event` for delivery to url from any process; a gateway's dispatcher sends it. Returns the event id."""
    pipe = client.pipeline(transaction=True)  # MULTI/EXEC: the delivery and both indexes, or none
    event_id = add_delivery(pipe, job_id, tenant, Webhook(url, event), prefix)
    pipe.execute()
    return event_id


class RedisWebhookOutbox(Dispatcher):
    """The Outbox protocol (services/gateway/webhooks.py) over Redis, with a dispatcher that shares the
    deliveries with the other replicas' through leases."""

    def __init__(
        self,
        client: redis.Redis,
        keys: ApiKeyStore,
        fetcher: SafeFetcher,
        settings: Settings,
        metrics: Metrics,
        prefix: str = PREFIX,
        lease_s: float | None = None,
    ) -> None:
        super().__init__(keys, fetcher, settings, metrics)
        self.redis = require_text_replies(client)
        self.prefix = prefix
        self.lease_s = settings.webhook_timeout_s + LEASE_MARGIN_S if lease_s is None else lease_s
        # Names this dispatcher in the deliveries it holds (readable when inspecting Redis).
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._due = f"{prefix}webhooks:due"
        self._claim = client.register_script(_CLAIM)
        self._record_script = client.register_script(_RECORD)
        self._delete_for_job = client.register_script(_DELETE_FOR_JOB)

    def _delivery_key(self, event_id: str) -> str:
        return f"{self.prefix}webhook:{event_id}"

    def _job_key(self, job_id: str) -> str:
        return f"{self.prefix}webhooks:job:{job_id}"

    def add(self, job_id: str, tenant: str, url: str, event: dict[str, Any]) -> str:
        event_id = queue_webhook(self.redis, job_id, tenant, url, event, self.prefix)
        self._wake.set()
        return event_id

    @unavailable_as_queue_error
    def state(self, job_id: str) -> DeliveryState | None:
        latest = self.redis.zrevrange(self._job_key(job_id), 0, 0)
        if not latest:
            return None
        status, attempts, last_error = self.redis.hmget(
            self._delivery_key(latest[0]), "status", "attempts", "last_error"
        )
        return None if status is None else DeliveryState(status, int(attempts), last_error)

    @unavailable_as_queue_error
    def delete_for_job(self, job_id: str) -> None:
        self._delete_for_job(keys=[self._job_key(job_id), self._due], args=[self._delivery_key("")])

    def _take_due(self, now: float, limit: int, in_flight: Set[str]) -> tuple[list[str], float]:
        # Claimed ones are not due again until their lease ends, so `in_flight` needs no filtering here.
        args = [number(now), number(now + self.lease_s), limit, self.owner, self._delivery_key("")]
        due = self._claim(keys=[self._due], args=args)
        upcoming = self.redis.zrange(self._due, 0, 0, withscores=True)
        return list(due), upcoming[0][1] if upcoming else now + 1

    def _load(self, delivery_id: str) -> Delivery | None:
        fields = self.redis.hgetall(self._delivery_key(delivery_id))
        if fields.get("status") != "pending" or fields.get("lease") != self.owner:
            return None
        return Delivery(
            fields["id"], fields["tenant"], fields["url"], fields["payload"].encode(), int(fields["attempts"])
        )

    def _record(self, delivery: Delivery, outcome: Attempted) -> None:
        has_error = outcome.last_error is not None
        args = [
            self.owner,
            delivery.id,
            outcome.status,
            outcome.attempts,
            number(outcome.at),
            number(outcome.next_attempt_at),
            outcome.last_error or "",
            "1" if has_error else "0",
        ]
        self._record_script(keys=[self._delivery_key(delivery.id), self._due], args=args)
