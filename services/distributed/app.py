"""The Celery application: one queue per stage over Redis, configured so no job is lost or looped.

Reliability comes from the settings below, all of them needed together:
- acks_late + reject_on_worker_lost: a task is acknowledged only after it finished, and a worker
  process that dies mid-task (SIGKILL, OOM) gives its message back instead of losing it;
- prefetch 1: a worker holds no more than the task it runs, so a dead worker strands nothing else;
- the broker's visibility timeout above the hard time limit: a message whose worker vanished
  entirely (the whole host) comes back after the timeout, and never while a slow task still runs;
- a soft time limit below the hard one, so a task over time fails its job cleanly (job_timeout);
- no result backend: job state lives in the job store (Redis), which the gateway reads;
- no Celery chains: each stage task queues the next one itself (`send_stage`), inside its own retry
  loop. A chain's next step is published by Celery after the task returned, and a broker blip at that
  moment marks the task failed and acknowledges it: the job then waits, stuck, for the reaper.
The per-job attempt counter and the retries with backoff live in services/distributed/tasks.py.
"""

from __future__ import annotations

from celery import Celery
from kombu.exceptions import OperationalError

from services.common.config import Settings, get_settings
from services.common.errors import QueueUnavailable
from services.distributed.queues import QUEUES

# Seconds between the soft time limit (the task fails its job cleanly) and the hard one (killed).
SOFT_LIMIT_MARGIN_S = 5


def task_name(stage: str) -> str:
    return f"fitroom.{stage}"


def make_app(settings: Settings) -> Celery:
    app = Celery("fitroom", broker=settings.celery_broker_url, include=["services.distributed.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=max(1, settings.task_time_limit_s - SOFT_LIMIT_MARGIN_S),
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # Sweep for messages of dead workers every few seconds (kombu's default is about 100 s):
            # one cheap sorted-set read per sweep.
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 4)),
            "unacked_restore_throttle": 1,
            # The sweep holds a Redis lock while it runs; a worker SIGKILLed holding it stops every
            # sweep until the lock expires (kombu's default: 300 s). A sweep takes milliseconds.
            "unacked_mutex_expire": 15,
        },
        broker_connection_retry_on_startup=True,
        # Keep retrying the broker for good: a Redis restart must not end the worker.
        broker_connection_max_retries=None,
        task_ignore_result=True,
        result_backend=None,
        task_routes={task_name(stage): {"queue": stage} for stage in QUEUES},
        task_default_queue=QUEUES[0],
        task_serializer="json",
        accept_content=["json"],
        # A worker restarted after a crash gets no stale "revoked" list or clock sync from its peers.
        worker_enable_remote_control=True,
        worker_send_task_events=False,
        # The worker's own log line per task is noise at our rate; tasks log what matters.
        worker_hijack_root_logger=False,
    )
    return app


def send_stage(stage: str, job_id: str) -> None:
    """Queue the job's task for `stage` (the gateway sends the first, each task the next one);
    QueueUnavailable when the broker cannot take it."""
    try:
        app.send_task(
            task_name(stage),
            args=(job_id,),
            queue=stage,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.2},
        )
    except OperationalError as exc:
        raise QueueUnavailable(f"the job queue (Redis) is unreachable: {exc}") from exc


# The application the workers and the gateway use; `celery -A services.distributed.app` finds it.
app = make_app(get_settings())
