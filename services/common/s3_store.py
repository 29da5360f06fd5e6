"""ArtifactStore on S3 or any S3-compatible store (MinIO, SeaweedFS, Ceph), for distributed mode.

Same contract as LocalArtifactStore: the same key rules, plain string prefixes, sorted lists, a
missing key is ArtifactNotFound. Every key lives under `s3_prefix`, so deployments can share a
bucket. A put is one PutObject, atomic on S3: readers see the old or the new value, never a mix.

Failures of the store itself (unreachable, timed out, 5xx or throttled, credentials refused, the
bucket missing) come out as StorageUnavailable, a transient error the task layer retries; no
botocore exception leaves this module. botocore retries each call first (standard mode,
`s3_max_attempts` attempts with jittered exponential backoff).

Celery's prefork pool forks workers after import, and a boto3 client (its connection pool) must not
cross a fork, so the client is made lazily, once per process, and remade when os.getpid() changes.
One client is shared by the threads of a process (boto3 clients are thread-safe).
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import threading
from collections.abc import Iterator
from typing import Any, NamedTuple

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from services.common.artifacts import ArtifactNotFound, split_prefix, validate_key
from services.common.config import Settings, get_settings
from services.common.errors import StorageUnavailable

_DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys
_MAX_PRESIGN_S = 7 * 24 * 3600  # SigV4 presigned URLs cannot outlive a week
_MISSING_KEY_CODES = frozenset({"NoSuchKey", "404"})  # "404": HEAD answers carry no error body
_MISSING_BUCKET_CODES = frozenset({"NoSuchBucket", "404"})
_CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "ExpiredToken", "InvalidToken"}
)
_SERVER_CODES = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling"})

# Guards client creation in every store. Re-made in a forked child: a fork taken while another
# thread held it would leave the child's copy locked for ever.
_client_lock = threading.Lock()


def _new_lock_after_fork() -> None:
    global _client_lock
    _client_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)


class S3Credentials(NamedTuple):
    """Explicit credentials; without them boto3's usual chain (AWS_* variables, profile, role) is used."""

    access_key: str
    secret_key: str
    session_token: str | None = None


class S3ArtifactStore:
    """ArtifactStore over one bucket, every key under `prefix`."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        timeout_s: float = 10.0,
        max_attempts: int = 4,
        presign_expiry_s: int = 3600,
        credentials: S3Credentials | None = None,
    ) -> None:
        if not bucket:
            raise ValueError("S3 bucket name is empty: set FITROOM_S3_BUCKET")
        self.bucket = bucket
        self.prefix = _normalise_prefix(prefix)
        self.endpoint_url = endpoint_url or None
        self.region = region
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.presign_expiry_s = presign_expiry_s
        self._credentials = credentials
        self._client: tuple[int, BaseClient] | None = None  # (pid that made it, client): one read, no tearing

    @classmethod
    def from_settings(
        cls, settings: Settings | None = None, *, credentials: S3Credentials | None = None
    ) -> S3ArtifactStore:
        """The store the FITROOM_S3_* settings describe; credentials from boto3's chain unless given."""
        settings = settings or get_settings()
        return cls(
            settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            timeout_s=settings.s3_timeout_s,
            max_attempts=settings.s3_max_attempts,
            presign_expiry_s=settings.s3_presign_expiry_s,
            credentials=credentials,
        )

    def __repr__(self) -> str:
        return f"S3ArtifactStore(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint={self._where})"

    # ------------------------------------------------------------------ ArtifactStore

    def put(self, key: str, data: bytes) -> None:
        object_key = self._object_key(key)
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"  # for presigned downloads
        with self._translate_errors("put", key):
            self.client.put_object(Bucket=self.bucket, Key=object_key, Body=bytes(data), ContentType=content_type)

    def get(self, key: str) -> bytes:
        object_key = self._object_key(key)
        with self._translate_errors("get", key):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=object_key)
            except ClientError as e:
                if _error_code(e) in _MISSING_KEY_CODES:
                    raise ArtifactNotFound(key) from None
                raise
            return response["Body"].read()  # inside: a connection lost mid-body is translated too

    def exists(self, key: str) -> bool:
        object_key = self._object_key(key)
        with self._translate_errors("exists", key):
            try:
                self.client.head_object(Bucket=self.bucket, Key=object_key)
            except ClientError as e:
                # HEAD has no error body: a missing bucket also reads as 404 here. It is caught by the
                # put or get that follows, and by ping().
                if _error_code(e) in _MISSING_KEY_CODES:
                    return False
                raise
            return True

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under prefix, a page (up to 1000 keys) per DeleteObjects call."""
        deleted = 0
        with self._translate_errors("delete_prefix", prefix):
            for page in self._pages(prefix):
                if not page:
                    continue
                objects = [{"Key": self.prefix + key} for key in page]
                response = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
                errors = response.get("Errors", [])
                if errors:
                    first = errors[0]
                    raise StorageUnavailable(
                        f"S3 at {self._where} refused to delete {len(errors)} of {len(page)} objects under "
                        f"{prefix!r} (first: {first.get('Key')!r}: {first.get('Code')} {first.get('Message')})"
                    )
                deleted += len(page)
        return deleted

    def list(self, prefix: str = "") -> list[str]:
        with self._translate_errors("list", prefix):
            return sorted(key for page in self._pages(prefix) for key in page)

    # ------------------------------------------------------------------ beyond the protocol

    def presigned_url(self, key: str, expires_s: int | None = None) -> str:
        """A GET URL for key that anyone holding it may use until it expires (default: settings)."""
        expires_s = self.presign_expiry_s if expires_s is None else expires_s
        if not 1 <= expires_s <= _MAX_PRESIGN_S:
            raise ValueError(f"presigned URL expiry {expires_s}s is outside 1 to {_MAX_PRESIGN_S} seconds")
        object_key = self._object_key(key)
        with self._translate_errors("presign", key):
            return self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": object_key}, ExpiresIn=expires_s
            )

    def ensure_bucket(self) -> None:
        """Create the bucket when it is missing (development and tests; production buckets are provisioned)."""
        with self._translate_errors("ensure_bucket", ""):
            try:
                self.client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as e:
                if _error_code(e) not in _MISSING_BUCKET_CODES:
                    raise
            options: dict[str, Any] = {}
            if self.region != "us-east-1":  # the one region that refuses an explicit LocationConstraint
                options["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
            try:
                self.client.create_bucket(Bucket=self.bucket, **options)
            except ClientError as e:
                if _error_code(e) != "BucketAlreadyOwnedByYou":  # another process won the race
                    raise

    def ping(self) -> None:
        """One cheap authenticated call (HeadBucket), for readiness probes; StorageUnavailable when not ready."""
        with self._translate_errors("ping", ""):
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as e:
                if _error_code(e) in _MISSING_BUCKET_CODES:  # HEAD has no error body: a bare 404
                    raise StorageUnavailable(self._bucket_missing("ping")) from e
                raise

    @property
    def client(self) -> BaseClient:
        """This process's boto3 S3 client, made on first use and again after a fork."""
        pid = os.getpid()
        made = self._client
        if made is not None and made[0] == pid:
            return made[1]
        with _client_lock:
            made = self._client
            if made is None or made[0] != pid:
                made = (pid, self._make_client())
                self._client = made
        return made[1]

    # ------------------------------------------------------------------ internals

    def _make_client(self) -> BaseClient:
        config = Config(
            signature_version="s3v4",
            connect_timeout=self.timeout_s,
            read_timeout=self.timeout_s,
            # total_max_attempts counts the first try; Config's "max_attempts" would count retries only.
            retries={"total_max_attempts": self.max_attempts, "mode": "standard"},
            # Custom endpoints are often a bare host (a compose service, an IP) that cannot take the
            # bucket as a subdomain; AWS itself prefers virtual-hosted addressing.
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
            # botocore >= 1.36 sends CRC checksums by default, which several S3-compatible stores reject.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # A session per client: boto3's default session is not thread-safe.
        session = boto3.session.Session(
            aws_access_key_id=self._credentials.access_key if self._credentials else None,
            aws_secret_access_key=self._credentials.secret_key if self._credentials else None,
            aws_session_token=self._credentials.session_token if self._credentials else None,
            region_name=self.region,
        )
        return session.client("s3", endpoint_url=self.endpoint_url, config=config)

    def _object_key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _pages(self, prefix: str) -> Iterator[list[str]]:
        """Store keys under prefix, one ListObjectsV2 page (up to 1000) at a time, in S3's (sorted) order."""
        split_prefix(prefix)  # the same prefix rules as the local store
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            keys = [obj["Key"][len(self.prefix) :] for obj in page.get("Contents", [])]
            # Only keys this store could have written: not folder markers ("a/") or foreign names.
            yield [key for key in keys if _is_valid_key(key)]

    @property
    def _where(self) -> str:
        return self.endpoint_url or f"AWS ({self.region})"

    def _bucket_missing(self, what: str) -> str:
        return f"S3 bucket {self.bucket!r} does not exist at {self._where} ({what})"

    @contextlib.contextmanager
    def _translate_errors(self, operation: str, key: str) -> Iterator[None]:
        """Turn botocore's exceptions into StorageUnavailable, saying which failure it was."""
        what = f"{operation} {key!r}" if key else operation
        try:
            yield
        except ClientError as e:
            raise StorageUnavailable(self._client_error_message(e, what)) from e
        except (ConnectTimeoutError, ReadTimeoutError) as e:
            raise StorageUnavailable(
                f"S3 at {self._where} timed out ({what}, {self.timeout_s:g}s timeout, "
                f"{self.max_attempts} attempts): {e}"
            ) from e
        except (EndpointConnectionError, BotoConnectionError) as e:
            raise StorageUnavailable(
                f"S3 at {self._where} is unreachable ({what}, {self.max_attempts} attempts): {e}"
            ) from e
        except HTTPClientError as e:
            raise StorageUnavailable(f"S3 at {self._where} dropped the connection ({what}): {e}") from e
        except (NoCredentialsError, PartialCredentialsError) as e:
            raise StorageUnavailable(
                f"no usable S3 credentials ({what}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                f"a profile or an instance role: {e}"
            ) from e
        except BotoCoreError as e:
            raise StorageUnavailable(f"S3 at {self._where} failed ({what}): {e}") from e

    def _client_error_message(self, e: ClientError, what: str) -> str:
        code = _error_code(e)
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        detail = e.response.get("Error", {}).get("Message", "")
        if code == "NoSuchBucket":
            return self._bucket_missing(what)
        if code in _CREDENTIAL_CODES:
            return f"S3 at {self._where} refused the credentials or their permissions ({what}: {code} {detail})"
        if code in _SERVER_CODES or status >= 500:
            return f"S3 at {self._where} is failing ({what}: HTTP {status} {code} {detail}, after retries)"
        return f"S3 at {self._where} refused {what}: HTTP {status} {code} {detail}"


def _error_code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _is_valid_key(key: str) -> bool:
    try:
        validate_key(key)
    except ValueError:
        return False
    return True


def _normalise_prefix(prefix: str) -> str:
    """The empty prefix stays empty; "a/b" and "a/b/" become "a/b/". Held to the key rules."""
    stripped = prefix.strip("/")
    if not stripped:
        return ""
    try:
        validate_key(stripped)
    except ValueError:
        raise ValueError(f"invalid S3 prefix {prefix!r} (FITROOM_S3_PREFIX): use [A-Za-z0-9._-] segments") from None
    return stripped + "/"
