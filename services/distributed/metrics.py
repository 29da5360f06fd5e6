"""Worker metrics for Prometheus: per stage, task outcomes, time worked and time waited in the queue.

Celery's prefork pool runs tasks in child processes, so the metrics use prometheus_client's
multiprocess mode: each process writes its values to files in PROMETHEUS_MULTIPROC_DIR, and the
worker's main process serves their sum (`fitroom worker --metrics-port`). The variable must be set
before prometheus_client is first imported; `fitroom worker` does that.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, start_http_server

_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

# done: the stage ran; retried: a transient error, a retry was sent; failed: the job failed here;
# skipped: the job was gone or already finished (a duplicate or late delivery).
TASKS = Counter("fitroom_worker_tasks", "Stage task deliveries by outcome", ["stage", "outcome"])
WORKED = Histogram(
    "fitroom_worker_task_seconds", "Time a stage task worked, artifact I/O included", ["stage"], buckets=_BUCKETS
)
WAITED = Histogram(
    "fitroom_worker_task_waited_seconds",
    "Time from the previous stage's end (or the job's creation) to this stage's start",
    ["stage"],
    buckets=_BUCKETS,
)


def serve(port: int) -> None:
    """Serve every process's metrics, summed, on http://0.0.0.0:port/metrics (a daemon thread)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(port, registry=registry)
