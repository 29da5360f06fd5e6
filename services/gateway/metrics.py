"""Prometheus metrics on /metrics, in a registry of the app's own (two apps in one process, as in
tests, do not collide). Routes are labelled by their template (/v1/tryon/{job_id}), never by the
raw path, so ids cannot blow up the label space; paths that match no route share one label."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The *_created series double the output and no dashboard reads them.
disable_created_metrics()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_STAGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _StateCollector(Collector):
    """Gauges read at scrape time from the job store and the queue, so they are never stale."""

    def __init__(self, jobs_by_status: Callable[[], dict[str, int]], queue_depth: Callable[[], int]) -> None:
        self.jobs_by_status = jobs_by_status
        self.queue_depth = queue_depth

    def collect(self) -> Iterable[Metric]:
        jobs = GaugeMetricFamily("fitroom_jobs", "Jobs in the job store by status", labels=["status"])
        counts = self.jobs_by_status()
        for status in ("queued", "running", "succeeded", "failed"):
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs
        yield GaugeMetricFamily("fitroom_queue_depth", "Jobs waiting for a worker", value=self.queue_depth())


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fitroom_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "fitroom_http_request_duration_seconds",
            "HTTP request latency, until the response is sent",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "fitroom_stage_duration_seconds",
            "Time a pipeline stage ran (cache hits are counted in fitroom_stage_cache_hits)",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.stage_cache_hits = Counter(
            "fitroom_stage_cache_hits", "Stages served from the artifact cache", ["stage"], registry=self.registry
        )
        self.jobs_finished = Counter(
            "fitroom_jobs_finished",
            "Jobs finished, by status and error code",
            ["status", "code"],
            registry=self.registry,
        )
        self.webhook_attempts = Counter(
            "fitroom_webhook_attempts", "Webhook delivery attempts by outcome", ["outcome"], registry=self.registry
        )

    def watch(self, jobs_by_status: Callable[[], dict[str, int]], queue_depth: Callable[[], int]) -> None:
        self.registry.register(_StateCollector(jobs_by_status, queue_depth))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every request (plain ASGI, so it also sees responses from other middleware)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "other"
            labels = (method, label, str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - start)
