"""Settings in one place. Every knob reads an environment variable `FITROOM_<NAME>`."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field

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

    @property
    def gateway_db(self) -> Path:
        """The gateway's SQLite database: API keys, jobs, garments, webhook deliveries."""
        return self.data_dir / "gateway.sqlite3"

    def allowed_url_hosts(self) -> frozenset[str]:
        return frozenset(h.strip().lower() for h in self.url_allow_hosts.split(",") if h.strip())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
