"""The five stage tasks: thin shells that run one `Pipeline` method each and pass the job id on.

A job runs garment -> pose -> parser -> warp -> fusion, one queue per stage: the gateway queues the
first task and each task queues the next (`send_stage`) once its stage is done. Tasks pass only the
job id: inputs and intermediate results travel through the artifact store under fixed keys, so a
task that runs twice (a redelivered message) overwrites what it wrote the first time, and stage
results cached by content hash are simply found again.

Every task:
1. marks the job running in the job store; a job that is gone or already finished stops there;
2. counts this delivery: a message whose worker died `max_task_attempts` times fails the job with
   worker_lost instead of killing workers forever;
3. runs its stage; transient failures (Triton, S3 or Redis unreachable) are retried with doubling
   backoff, then fail the job with the error's own code; other errors fail it at once;
4. records the stage's progress, and the times it waited and worked (for bench/distributed.py);
5. queues the next stage's task. Up to here the message is not acknowledged, so a worker that dies
   anywhere before leaves it to be delivered again, and a broker that cannot take the next task
   makes this one wait and run again (its stage result is cached), never a stage done with no next.
A task killed by the hard time limit is acknowledged by Celery; `StageTask.on_failure` then fails
its job (job_timeout) from the worker's main process, rather than leave it for the reaper.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
from celery import Task
from celery.exceptions import Ignore, Reject, SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import worker_process_init

from services.common.artifacts import ArtifactStore, artifact_store
from services.common.config import Settings, get_settings
from services.common.contracts import WarpResult
from services.common.errors import TRANSIENT_ERRORS, FitroomError, JobTimeout, QueueUnavailable, WorkerLost
from services.common.inference import Infer, inference_backend
from services.common.mediapipe_models import FACE_LANDMARK, POSE_DETECTION, POSE_LANDMARK
from services.distributed import metrics
from services.distributed.app import SOFT_LIMIT_MARGIN_S, app, send_stage, task_name
from services.distributed.queues import QUEUES
from services.distributed.state import DistributedState, distributed_state
from services.fusion.model import NAME as FUSION_MODEL
from services.gateway.jobs import Job, StageState
from services.gateway.storage import TenantArtifactStore, job_work_prefix
from services.gateway.worker import (
    StageRecorder,
    conclude,
    job_ended_in_batch,
    job_webhook,
    load_garment,
    load_person,
    store_intermediates,
    store_result,
)
from services.learned import learned_models
from services.pipeline import Pipeline, for_category
from services.warp.model import NAME as WARP_MODEL

log = logging.getLogger("fitroom.distributed")

# The models each stage calls, loaded when a worker process starts so its first task is not slow.
STAGE_MODELS: dict[str, tuple[str, ...]] = {
    "garment": (),
    "pose": (POSE_DETECTION.name, POSE_LANDMARK.name),
    "parser": (FACE_LANDMARK.name,),
    "warp": (WARP_MODEL,),
    "fusion": (FUSION_MODEL,),
}


@dataclass
class Worker:
    """What a worker process holds: made once per process, after the fork (clients are not fork-safe)."""

    settings: Settings
    artifacts: ArtifactStore
    infer: Infer
    state: DistributedState


@cache
def _worker(pid: int) -> Worker:
    settings = get_settings()
    return Worker(settings, artifact_store(settings), inference_backend(settings), distributed_state(settings))


def worker() -> Worker:
    return _worker(os.getpid())


@worker_process_init.connect
def _warm_up(**_: object) -> None:
    """Load this worker's models as its process starts (Celery's `-Q` tells which stages it serves)."""
    stages = os.environ.get("FITROOM_WORKER_STAGES", ",".join(QUEUES)).split(",")
    load = getattr(worker().infer, "load", None)
    if load is None:
        return
    for stage in stages:
        learned = learned_models(stage, worker().settings.learned)
        for model in STAGE_MODELS.get(stage, ()) + learned:
            try:
                load(model)
            except FitroomError as exc:  # the task will fail (or retry) with the same error, visibly
                log.warning("could not load %s at start: %s", model, exc.message)


# Where a job's intermediate results live between tasks (inside its tenant's store). They stay until
# the job is concluded, so a task that runs again after a crash still finds its inputs.
def warped_key(job_id: str) -> str:
    return f"{job_work_prefix(job_id)}warped.npz"


def put_warped(store: ArtifactStore, job_id: str, warped: WarpResult) -> None:
    """Lossless (the fusion stage must see what the embedded runner sees), compressed: mostly zeros."""
    buf = io.BytesIO()
    meta = np.frombuffer(json.dumps(warped.model_dump()).encode(), dtype=np.uint8)
    np.savez_compressed(buf, rgba=warped.rgba, meta=meta)
    store.put(warped_key(job_id), buf.getvalue())


def get_warped(store: ArtifactStore, job_id: str) -> WarpResult:
    with np.load(io.BytesIO(store.get(warped_key(job_id))), allow_pickle=False) as saved:
        return WarpResult.model_validate({**json.loads(saved["meta"].tobytes()), "rgba": saved["rgba"]})


Step = Callable[[Worker, Job, TenantArtifactStore, StageRecorder], None]


def run_stage(task: Task, stage: str, job_id: str, step: Step) -> None:
    """One delivery of one stage of a job; see the module docstring.

    While the job store (Redis) is unreachable nothing can be recorded, and the broker, the same
    Redis in most deployments, can neither take a retry nor an acknowledgement: the task waits for
    it in place and then runs the stage again from the start (every stage is idempotent).
    """
    settings = worker().settings
    deadline = time.monotonic() + settings.task_time_limit_s - 2 * SOFT_LIMIT_MARGIN_S
    pause = settings.task_retry_backoff_s
    repeats = 0
    while True:
        try:
            return _run_once(task, stage, job_id, step, repeats)
        except QueueUnavailable as exc:
            if time.monotonic() + pause > deadline:
                # Back to the queue (or, with the broker down too, left unacknowledged: the broker
                # hands it out again after the visibility timeout). Never dropped.
                raise Reject(exc.message, requeue=True) from exc
            log.warning("job %s %s: %s; trying again in %.1f s", job_id, stage, exc.message, pause)
            time.sleep(pause)
            pause = min(2 * pause, settings.task_retry_backoff_max_s)
            repeats += 1


def _run_once(task: Task, stage: str, job_id: str, step: Step, repeats: int = 0) -> None:
    context = worker()
    settings, state = context.settings, context.state
    retries = task.request.retries
    job = state.jobs.start(job_id)
    if job is None:
        metrics.TASKS.labels(stage, "skipped").inc()
        raise Ignore()  # deleted, or finished (failed earlier, by the reaper, or a duplicate delivery)
    following = QUEUES[QUEUES.index(stage) + 1] if stage != QUEUES[-1] else None
    if following is not None and job.stages[following].status != "pending":
        # A duplicate: the job has moved on (a message given back after this stage sent the next one,
        # or the reaper's resend of a message that was not lost after all).
        metrics.TASKS.labels(stage, "skipped").inc()
        raise Ignore()
    store = TenantArtifactStore(context.artifacts, job.tenant)
    recorder = StageRecorder(state.jobs, None, job_id)
    try:
        metrics.WAITED.labels(stage).observe(state.timing.waited(job, stage))
        state.timing.started(job_id, stage)
        start = time.perf_counter()
        # Every start of this stage counts; planned retries and runs again in place are not deaths.
        deaths = state.jobs.count_attempt(job_id, stage) - 1 - retries - repeats
        if deaths >= settings.max_task_attempts:
            raise WorkerLost(
                f"the {stage} stage's worker died on each of {deaths} attempts at this job "
                "(a poison input, or too little memory)"
            )
        step(context, job, store, recorder)
        if following is not None:
            current = state.jobs.get(job.tenant, job_id)
            if current is None or current.finished:
                # It ended while this ran (a duplicate delivery, the reaper, a DELETE): what this run
                # wrote for the next stage must not outlive it.
                conclude(job, None, state.jobs, store, state.outbox)
                metrics.TASKS.labels(stage, "skipped").inc()
                raise Ignore()
            send_stage(following, job_id)
        state.timing.finished(job_id, stage)
        metrics.WORKED.labels(stage).observe(time.perf_counter() - start)
        metrics.TASKS.labels(stage, "done").inc()
    except (QueueUnavailable, Ignore):
        raise
    except TRANSIENT_ERRORS as exc:  # Triton or S3: the broker is up, so a retry message can be sent
        if retries < settings.task_retries:
            countdown = _backoff(settings, retries)
            log.warning("job %s %s: %s; retry %d in %.1f s", job_id, stage, exc.message, retries + 1, countdown)
            metrics.TASKS.labels(stage, "retried").inc()
            raise task.retry(countdown=countdown, max_retries=settings.task_retries) from exc
        _fail(context, job, store, stage, exc.code, f"{exc.message} (after {retries} retries)")
    except FitroomError as exc:
        _fail(context, job, store, stage, exc.code, exc.message)
    except SoftTimeLimitExceeded:
        error = JobTimeout(f"the {stage} stage ran past FITROOM_TASK_TIME_LIMIT_S ({settings.task_time_limit_s} s)")
        _fail(context, job, store, stage, error.code, error.message)
    except Exception:
        log.exception("job %s failed unexpectedly in %s", job_id, stage)
        _fail(context, job, store, stage, "internal_error", "internal error; it has been logged")


def _backoff(settings: Settings, retries: int) -> float:
    return min(settings.task_retry_backoff_s * 2**retries, settings.task_retry_backoff_max_s)


def _fail(context: Worker, job: Job, store: TenantArtifactStore, stage: str, code: str, message: str) -> None:
    if fail_stage(context, job.id, stage, code, message) is None:
        conclude(job, None, context.state.jobs, store, context.state.outbox)  # it ended otherwise meanwhile
    raise Ignore()  # the job is over: no next stage is sent


def fail_stage(context: Worker, job_id: str, stage: str, code: str, message: str) -> Job | None:
    """The stage failed, and with it the job (its webhook queued, its inputs dropped); the failed
    job, or None when it had been deleted or had ended otherwise."""
    metrics.TASKS.labels(stage, "failed").inc()
    context.state.jobs.set_stage(job_id, stage, StageState("failed"))
    outcome = context.state.jobs.finish(job_id, "failed", error=(code, message), webhook=job_webhook(context.settings))
    if outcome is not None:
        store = TenantArtifactStore(context.artifacts, outcome.tenant)
        conclude(outcome, outcome, context.state.jobs, store, context.state.outbox)
        _batch_job_ended(context, outcome, store)
    return outcome


def _batch_job_ended(context: Worker, job: Job, store: TenantArtifactStore) -> None:
    state = context.state
    job_ended_in_batch(job, state.batches, state.jobs, store, state.outbox, context.settings)


def _pipeline(context: Worker, store: TenantArtifactStore) -> Pipeline:
    # The person lock is scoped by the tenant's store prefix, as the cache it guards is. A quarter of
    # the time limit: a task redelivered after its worker died holding the lock must still have time
    # to compute once that lock has expired (it waits at most that long, then computes anyway).
    lock = context.state.person_lock(store.prefix, context.settings.task_time_limit_s / 4)
    return Pipeline(store, context.infer, context.settings.learned or None, lock)


def garment_step(context: Worker, job: Job, store: TenantArtifactStore, recorder: StageRecorder) -> None:
    image, category = load_garment(store, job, context.state.garments)
    _pipeline(context, store).garment(image, category, recorder)


def pose_step(context: Worker, job: Job, store: TenantArtifactStore, recorder: StageRecorder) -> None:
    _pipeline(context, store).pose(load_person(store, job), recorder)


def parser_step(context: Worker, job: Job, store: TenantArtifactStore, recorder: StageRecorder) -> None:
    pipeline = _pipeline(context, store)
    person = load_person(store, job)
    pipeline.parse(person, pipeline.pose(person), recorder)


def warp_step(context: Worker, job: Job, store: TenantArtifactStore, recorder: StageRecorder) -> None:
    pipeline = _pipeline(context, store)
    garment_image, category = load_garment(store, job, context.state.garments)
    analysis = pipeline.garment(garment_image, category)
    pose, parse = pipeline.person(load_person(store, job))
    _, warped = pipeline.warp(garment_image, analysis, pose, parse, recorder)
    put_warped(store, job.id, warped)


def fusion_step(context: Worker, job: Job, store: TenantArtifactStore, recorder: StageRecorder) -> None:
    pipeline = _pipeline(context, store)
    person = load_person(store, job)
    pose, parse = pipeline.person(person)
    warped = get_warped(store, job.id)
    dressed = for_category(pose, parse, warped.category)
    image = pipeline.fuse(person, pose, dressed, warped, recorder)
    if job.intermediates:
        store_intermediates(store, job, person, pose, dressed, warped)
    succeed(context, job, store, image, warped.category)


def succeed(context: Worker, job: Job, store: TenantArtifactStore, image: np.ndarray, category: str) -> None:
    """The last stage's end: the result stored, the job finished with its webhook, the inputs dropped."""
    store_result(store, job, image)
    webhook = job_webhook(context.settings)
    outcome = context.state.jobs.finish(job.id, "succeeded", detected_category=category, webhook=webhook)
    conclude(job, outcome, context.state.jobs, store, context.state.outbox)
    if outcome is not None:
        _batch_job_ended(context, outcome, store)


STEPS: dict[str, Step] = {
    "garment": garment_step,
    "pose": pose_step,
    "parser": parser_step,
    "warp": warp_step,
    "fusion": fusion_step,
}


class StageTask(Task):
    def on_failure(self, exc: Exception, task_id: str, args: tuple, kwargs: dict, einfo: object) -> None:
        """Celery calls this in the worker's main process when the hard time limit killed the pool
        process running the task (the soft limit could not interrupt it: a long native call). The
        message is acknowledged after this, so the job fails here or waits for the reaper."""
        if not isinstance(exc, TimeLimitExceeded):
            return
        stage, job_id = self.name.removeprefix(task_name("")), args[0]
        context = worker()
        error = JobTimeout(
            f"the {stage} stage ran past FITROOM_TASK_TIME_LIMIT_S ({context.settings.task_time_limit_s} s)"
            " and was stopped"
        )
        fail_stage(context, job_id, stage, error.code, error.message)
        log.warning("job %s %s: %s", job_id, stage, error.message)


def _define(stage: str) -> Task:
    @app.task(bind=True, base=StageTask, name=task_name(stage), queue=stage)
    def stage_task(self: Task, job_id: str) -> None:
        run_stage(self, stage, job_id, STEPS[stage])

    return stage_task


TASKS: dict[str, Task] = {stage: _define(stage) for stage in QUEUES}
