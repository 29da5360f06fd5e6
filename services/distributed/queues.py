"""The Celery queue of each stage. A queue's name is also its Redis list (KEDA scales on its length)."""

from __future__ import annotations

# One queue per stage, in the order a job visits them. `fitroom worker --stage NAME` consumes one.
QUEUES: tuple[str, ...] = ("garment", "pose", "parser", "warp", "fusion")
