"""Settings in one place. Every knob reads an environment variable `FITROOM_<NAME>`."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, Field, model_validator

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _env(name: str, default: str) -> str:
    return os.environ.get(f"FITROOM_{name}", default)


class Settings(BaseModel):
    # Triton model repository: triton_models/<name>/config.pbtxt and 1/model.pt.
    model_repository: Path = Field(
        default_factory=lambda: Path(_env("MODEL_REPOSITORY", str(PROJECT_ROOT / "triton_models")))
    )
    # Downloaded wheels and other build inputs.
    cache_dir: Path = Field(default_factory=lambda: Path(_env("CACHE_DIR", str(Path.home() / ".cache" / "fitroom"))))
    # Artifacts, job state and results in embedded mode.
    data_dir: Path = Field(default_factory=lambda: Path(_env("DATA_DIR", str(PROJECT_ROOT / "data"))))
    max_image_bytes: int = Field(default_factory=lambda: int(_env("MAX_IMAGE_BYTES", str(20 * 1024 * 1024))))
    max_image_pixels: int = Field(default_factory=lambda: int(_env("MAX_IMAGE_PIXELS", str(40_000_000))))
    # Intra-op threads for the local TorchScript backend; 0 leaves torch's default.
    torch_threads: int = Field(default_factory=lambda: int(_env("TORCH_THREADS", "0")))
    # OpenCV's own thread pool; 1 keeps it from contending with torch for the cores.
    opencv_threads: int = Field(default_factory=lambda: int(_env("OPENCV_THREADS", "1")))
    # The learned networks, trained under bf16 autocast, run so in the local backend: "auto" where
    # the CPU computes in bf16 natively (AVX-512 BF16, AMX; elsewhere it is emulated and slower),
    # "on" always, "off" never (fp32, as Triton runs them).
    cpu_bf16: Literal["auto", "on", "off"] = Field(default_factory=lambda: _env("CPU_BF16", "auto"))
    # The learned path (warp_gmm and tryon_generator), named by the weights installed with
    # `fitroom models install CHECKPOINT --name NAME`; empty runs the geometric default. No
    # weights are installed by default (docs/TRAINING.md).
    learned: str = Field(default_factory=lambda: _env("LEARNED", ""), pattern=r"^[a-z0-9][a-z0-9-]{0,40}$|^$")
    # The learned try-off (tryoff_generator, `fitroom train tryoff`), named the same way; its own
    # setting, as a retailer may train the try-on and not the try-off. Empty: the geometric one.
    learned_tryoff: str = Field(
        default_factory=lambda: _env("LEARNED_TRYOFF", ""), pattern=r"^[a-z0-9][a-z0-9-]{0,40}$|^$"
    )

    # --- REST gateway (`fitroom serve`, services/gateway) ---
    # Base URL clients reach the gateway at, for the status, result and webhook links; unset, the
    # URL each request came in on is used (set it behind a proxy that rewrites the host).
    public_url: str = Field(default_factory=lambda: _env("PUBLIC_URL", ""))
    # Pipeline worker threads of `fitroom serve` (its --workers overrides).
    workers: int = Field(default_factory=lambda: int(_env("WORKERS", "1")), ge=1)
    # Jobs that may wait for a worker; past that a submission is answered 503 with Retry-After.
    queue_size: int = Field(default_factory=lambda: int(_env("QUEUE_SIZE", "32")), ge=1)
    # The Retry-After a full queue answers with.
    queue_retry_after_s: int = Field(default_factory=lambda: int(_env("QUEUE_RETRY_AFTER_S", "5")), ge=1)
    # A whole request body (two base64 images take 4/3 of their bytes each, plus the form around them).
    max_request_bytes: int = Field(default_factory=lambda: int(_env("MAX_REQUEST_BYTES", str(64 * 1024 * 1024))))
    # A gateway process remembers a key it authenticated this long, so most requests read no store;
    # a revoked key is refused by every replica within this time. 0: every request reads the store.
    auth_cache_s: float = Field(default_factory=lambda: float(_env("AUTH_CACHE_S", "5")), ge=0)
    # The longest `?wait=N` long-poll the gateway holds a request for.
    max_wait_s: float = Field(default_factory=lambda: float(_env("MAX_WAIT_S", "60")))
    # How long an Idempotency-Key is remembered (Stripe's 24 h).
    idempotency_ttl_s: float = Field(default_factory=lambda: float(_env("IDEMPOTENCY_TTL_S", str(24 * 3600))))
    # Finished jobs (their result and their row) are erased after this; 0 keeps them until DELETE.
    job_retention_s: float = Field(default_factory=lambda: float(_env("JOB_RETENTION_S", str(7 * 24 * 3600))))
    # How long shutdown waits for running jobs; those still running are re-queued at the next start.
    shutdown_grace_s: float = Field(default_factory=lambda: float(_env("SHUTDOWN_GRACE_S", "10")))
    # Image URLs and webhook callbacks: the whole fetch (connect, redirects, body) must fit in this.
    fetch_timeout_s: float = Field(default_factory=lambda: float(_env("FETCH_TIMEOUT_S", "10")))
    fetch_max_redirects: int = Field(default_factory=lambda: int(_env("FETCH_MAX_REDIRECTS", "3")))
    # host:port pairs that image URLs and callbacks may reach over plain http and at any address
    # (comma separated). Empty in production: only https to public addresses. For tests and for an
    # on-premises image server; each entry is a hole in the SSRF guard.
    url_allow_hosts: str = Field(default_factory=lambda: _env("URL_ALLOW_HOSTS", ""))
    # Webhooks: attempt n waits min(backoff * 2**(n-1), backoff_max) after attempt n-1 failed.
    webhook_max_attempts: int = Field(default_factory=lambda: int(_env("WEBHOOK_MAX_ATTEMPTS", "10")), ge=1)
    webhook_backoff_s: float = Field(default_factory=lambda: float(_env("WEBHOOK_BACKOFF_S", "10")))
    webhook_backoff_max_s: float = Field(default_factory=lambda: float(_env("WEBHOOK_BACKOFF_MAX_S", "3600")))
    webhook_timeout_s: float = Field(default_factory=lambda: float(_env("WEBHOOK_TIMEOUT_S", "10")))
    # The storefront demo page at /demo (services/gateway/static): off unless FITROOM_DEMO=1. It
    # uses only the public API with the key typed into it, but it is a page for people to look at,
    # not something a production gateway should serve.
    demo: bool = Field(default_factory=lambda: _env("DEMO", "") in ("1", "true", "yes"))

    # --- Distributed mode (services/distributed; DESIGN.md "Modes") ---
    # "embedded": jobs run on the gateway's own threads, state in its SQLite database.
    # "distributed": jobs, garments, API keys and webhooks in Redis; stages run as Celery tasks
    # on per-stage queues, served by `fitroom worker --stage ...`.
    mode: Literal["embedded", "distributed"] = Field(default_factory=lambda: _env("MODE", "embedded"))
    # Shared state of the distributed mode. Production Redis: AOF on, maxmemory-policy noeviction.
    redis_url: str = Field(default_factory=lambda: _env("REDIS_URL", "redis://127.0.0.1:6379/0"))
    # Celery's broker; unset, the same Redis.
    broker_url: str = Field(default_factory=lambda: _env("BROKER_URL", ""))
    # A task past this is killed (Celery's hard time limit); its job is retried or fails.
    task_time_limit_s: int = Field(default_factory=lambda: int(_env("TASK_TIME_LIMIT_S", "120")), ge=1)
    # An unacknowledged task returns to its queue after this (a worker died holding it). Must exceed
    # the time limit, or a slow task would be handed to a second worker while the first still runs.
    visibility_timeout_s: int = Field(default_factory=lambda: int(_env("VISIBILITY_TIMEOUT_S", "300")), ge=1)
    # Times one stage of a job may be started before the job fails with worker_lost (a poison input
    # that kills its worker every time must not loop forever).
    max_task_attempts: int = Field(default_factory=lambda: int(_env("MAX_TASK_ATTEMPTS", "3")), ge=1)
    # Transient failures (Triton, S3 or Redis unreachable): retried this often, backoff doubling from
    # task_retry_backoff_s up to task_retry_backoff_max_s, then the job fails with the error's code.
    task_retries: int = Field(default_factory=lambda: int(_env("TASK_RETRIES", "5")), ge=0)
    task_retry_backoff_s: float = Field(default_factory=lambda: float(_env("TASK_RETRY_BACKOFF_S", "1")), gt=0)
    task_retry_backoff_max_s: float = Field(default_factory=lambda: float(_env("TASK_RETRY_BACKOFF_MAX_S", "30")))
    # The reaper fails a job still unfinished this long after it was accepted (code job_timeout).
    job_deadline_s: float = Field(default_factory=lambda: float(_env("JOB_DEADLINE_S", "900")), gt=0)

    # Where models run: "local" (TorchScript in this process) or "triton" (tritonclient).
    inference: Literal["local", "triton"] = Field(default_factory=lambda: _env("INFERENCE", "local"))
    # host:port of Triton's gRPC (default port 8001) or HTTP (8000) endpoint.
    triton_url: str = Field(default_factory=lambda: _env("TRITON_URL", "127.0.0.1:8001"))
    triton_protocol: Literal["grpc", "http"] = Field(default_factory=lambda: _env("TRITON_PROTOCOL", "grpc"))
    # One inference request's deadline; a failed one is retried with doubling backoff.
    triton_timeout_s: float = Field(default_factory=lambda: float(_env("TRITON_TIMEOUT_S", "30")), gt=0)
    triton_retries: int = Field(default_factory=lambda: int(_env("TRITON_RETRIES", "3")), ge=0)
    triton_retry_backoff_s: float = Field(default_factory=lambda: float(_env("TRITON_RETRY_BACKOFF_S", "0.5")))

    # Where artifacts live: "local" (FITROOM_DATA_DIR/artifacts) or "s3" (boto3, any S3-compatible
    # store; credentials from the usual AWS_* variables or the instance's role).
    storage: Literal["local", "s3"] = Field(default_factory=lambda: _env("STORAGE", "local"))
    s3_bucket: str = Field(default_factory=lambda: _env("S3_BUCKET", "fitroom"))
    s3_prefix: str = Field(default_factory=lambda: _env("S3_PREFIX", ""))
    # Unset: AWS itself. For MinIO, SeaweedFS, Ceph and the like, their URL.
    s3_endpoint_url: str = Field(default_factory=lambda: _env("S3_ENDPOINT_URL", ""))
    s3_region: str = Field(default_factory=lambda: _env("S3_REGION", "us-east-1"))
    s3_timeout_s: float = Field(default_factory=lambda: float(_env("S3_TIMEOUT_S", "10")), gt=0)
    s3_max_attempts: int = Field(default_factory=lambda: int(_env("S3_MAX_ATTEMPTS", "4")), ge=1)
    # Result URLs handed to clients are presigned for this long.
    s3_presign_expiry_s: int = Field(default_factory=lambda: int(_env("S3_PRESIGN_EXPIRY_S", "3600")), ge=1)

    @model_validator(mode="after")
    def _check_timeouts(self) -> Self:
        if self.visibility_timeout_s <= self.task_time_limit_s:
            raise ValueError(
                f"FITROOM_VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s}) must exceed "
                f"FITROOM_TASK_TIME_LIMIT_S ({self.task_time_limit_s})"
            )
        return self

    @property
    def stall_timeout_s(self) -> float:
        """A distributed job silent this long lost its next task message (the broker gives a dead worker's
        back after the visibility timeout, and a task runs at most the time limit): the reaper sends it again."""
        return float(self.visibility_timeout_s + self.task_time_limit_s)

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def gateway_db(self) -> Path:
        """The gateway's SQLite database: API keys, jobs, garments, webhook deliveries."""
        return self.data_dir / "gateway.sqlite3"

    def allowed_url_hosts(self) -> frozenset[str]:
        return frozenset(h.strip().lower() for h in self.url_allow_hosts.split(",") if h.strip())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
