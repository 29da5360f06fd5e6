"""API keys and tenants.

A key looks like `fr_<key id>_<secret>`. Only its SHA-256 is stored: a key is 256 random bits, so
a fast hash is as safe as a slow one (there is nothing to brute-force) and lets every request be
checked with one indexed lookup. The key id is public: it names the key in `fitroom keys list`
and in logs without revealing it. Each tenant also has the secret its webhooks are signed with.

`ApiKeyStore` is what the gateway uses; `KeyStore` keeps keys in the SQLite database (embedded
mode), `RedisKeyStore` (services/gateway/redis_state.py) in Redis (distributed mode).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from typing import Protocol

from services.gateway.db import Database

_TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
KEY_PREFIX = "fr_"


def valid_tenant(tenant: str) -> bool:
    """Tenant ids become artifact-key segments and log fields: lowercase letters, digits, _ and -."""
    return _TENANT.fullmatch(tenant) is not None


def check_tenant(tenant: str) -> str:
    """`tenant` itself when valid, else ValueError saying what a tenant id may be."""
    if not valid_tenant(tenant):
        raise ValueError(f"invalid tenant {tenant!r}: 1 to 63 of a-z, 0-9, _ and -, starting with a letter or digit")
    return tenant


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh (key id, key)."""
    key_id = secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def may_be_key(key: str) -> bool:
    """Worth a lookup: has our prefix and a sane length."""
    return key.startswith(KEY_PREFIX) and len(key) <= 200


@dataclass(frozen=True)
class ApiKey:
    id: str
    tenant: str
    name: str
    created_at: float
    revoked_at: float | None


@dataclass(frozen=True)
class NewKey:
    key: str  # shown once, never stored
    id: str
    tenant: str
    webhook_secret: str


class ApiKeyStore(Protocol):
    def create(self, tenant: str, name: str = "") -> NewKey:
        """A new key for `tenant`, creating the tenant (and its webhook secret) on first use; ValueError for an
        invalid tenant id."""
        ...

    def authenticate(self, key: str) -> str | None:
        """The tenant of a live key, or None."""
        ...

    def revoke(self, key_id: str) -> bool:
        """False when there is no such live key."""
        ...

    def list(self, tenant: str | None = None) -> list[ApiKey]:
        """Every key (of one tenant), revoked ones too, oldest first."""
        ...

    def webhook_secret(self, tenant: str) -> str | None: ...

    def rotate_webhook_secret(self, tenant: str) -> str | None:
        """The tenant's new secret; None when there is no such tenant."""
        ...


class AuthCache:
    """The tenants of keys authenticated in the last `ttl_s` seconds, by key hash: a request whose key
    is here reads no store. Refusals are not remembered (a key just created works at once)."""

    MAX_KEYS = 10_000  # then it starts over: a bound on memory, not an eviction policy worth more

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._tenants: dict[str, tuple[str, float]] = {}

    def get(self, key: str) -> str | None:
        entry = self._tenants.get(hash_key(key))
        return entry[0] if entry is not None and entry[1] > time.monotonic() else None

    def put(self, key: str, tenant: str) -> None:
        if self.ttl_s <= 0:
            return
        if len(self._tenants) >= self.MAX_KEYS:
            self._tenants.clear()
        self._tenants[hash_key(key)] = (tenant, time.monotonic() + self.ttl_s)


class KeyStore:
    """API keys and tenants in the gateway's SQLite database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, tenant: str, name: str = "") -> NewKey:
        check_tenant(tenant)
        key_id, key = new_key()
        now = time.time()
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO tenants (id, webhook_secret, created_at) VALUES (?, ?, ?)",
                (tenant, new_webhook_secret(), now),
            )
            conn.execute(
                "INSERT INTO api_keys (id, tenant, key_hash, name, created_at) VALUES (?, ?, ?, ?, ?)",
                (key_id, tenant, hash_key(key), name, now),
            )
            secret = conn.execute("SELECT webhook_secret FROM tenants WHERE id = ?", (tenant,)).fetchone()[0]
        return NewKey(key=key, id=key_id, tenant=tenant, webhook_secret=secret)

    def authenticate(self, key: str) -> str | None:
        if not may_be_key(key):
            return None
        rows = self.db.query("SELECT tenant FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", (hash_key(key),))
        return rows[0]["tenant"] if rows else None

    def revoke(self, key_id: str) -> bool:
        return (
            self.db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (time.time(), key_id)
            )
            > 0
        )

    def list(self, tenant: str | None = None) -> list[ApiKey]:
        sql, params = "SELECT * FROM api_keys", ()
        if tenant is not None:
            sql, params = sql + " WHERE tenant = ?", (tenant,)
        rows = self.db.query(sql + " ORDER BY created_at", params)
        return [ApiKey(r["id"], r["tenant"], r["name"], r["created_at"], r["revoked_at"]) for r in rows]

    def webhook_secret(self, tenant: str) -> str | None:
        rows = self.db.query("SELECT webhook_secret FROM tenants WHERE id = ?", (tenant,))
        return rows[0][0] if rows else None

    def rotate_webhook_secret(self, tenant: str) -> str | None:
        secret = new_webhook_secret()
        changed = self.db.execute("UPDATE tenants SET webhook_secret = ? WHERE id = ?", (secret, tenant))
        return secret if changed else None


def new_webhook_secret() -> str:
    return f"whsec_{secrets.token_urlsafe(32)}"
