"""Prometheus metrics: request latency here; job and queue figures read from Redis at scrape
time, so every API replica reports the same cluster-wide numbers."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.broker import BrokerQueues
from shared.config import Settings
from shared.planning import all_queues
from shared.state.heartbeats import WorkerRegistry
from shared.state.jobs import JobRegistry
from shared.status import JobStatus

log = logging.getLogger("trainyard.access")
REGISTRY = CollectorRegistry()
REQUEST_SECONDS = Histogram(
    "trainyard_http_request_duration_seconds",
    "API request latency",
    ["method", "route", "status"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# Request body bytes handed to the app (after limits.RequestGuard's checks), by route template:
# a refused request adds nothing.
REQUEST_BODY_BYTES = Counter(
    "trainyard_http_request_body_bytes",
    "Request body bytes read by the API",
    ["method", "route"],
    registry=REGISTRY,
)
JOBS_SUBMITTED = Counter(
    "trainyard_api_jobs_submitted", "Jobs accepted by this API process", ["task"], registry=REGISTRY
)

# Samples and predict requests (services/api/inference.py), by outcome: answered (200 within
# INFERENCE_WAIT_S), pending (202), refused (4xx; 503 no parse slot), timed_out (504: no
# inference worker answered within INFERENCE_TIMEOUT_S), failed (other 5xx).
INFERENCE_REQUESTS = Counter(
    "trainyard_inference_requests",
    "Samples and predict requests, by kind and outcome",
    ["kind", "outcome"],
    registry=REGISTRY,
)
INFERENCE_SECONDS = Histogram(
    "trainyard_inference_answer_seconds",
    "From a samples or predict request to the inference worker's answer, when it came within "
    "INFERENCE_WAIT_S",
    ["kind"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class JobsCollector(Collector):
    def __init__(
        self,
        registry: JobRegistry,
        workers: WorkerRegistry,
        broker: BrokerQueues,
        settings: Settings,
    ) -> None:
        self.registry, self.workers, self.broker, self.settings = (
            registry,
            workers,
            broker,
            settings,
        )

    def collect(self) -> Iterator[Metric]:
        stats = self.registry.stats()
        submitted = CounterMetricFamily("trainyard_jobs_submitted", "Jobs submitted, all replicas")
        submitted.add_metric([], stats.get("submitted", 0))
        yield submitted
        finished = CounterMetricFamily(
            "trainyard_jobs_finished", "Jobs that ended, by status", labels=["status"]
        )
        for state in ("succeeded", "failed", "cancelled", "pruned"):
            finished.add_metric([state], stats.get(f"finished:{state}", 0))
        yield finished
        depth = GaugeMetricFamily(
            "trainyard_queue_depth", "Messages waiting, by queue", labels=["queue"]
        )
        for queue in all_queues(self.settings):
            depth.add_metric([queue], self.broker.depth(queue))
        yield depth
        states = [job.status for job in self.registry.active()]
        jobs = GaugeMetricFamily(
            "trainyard_jobs", "Jobs not yet finished, by status", labels=["status"]
        )
        for state in ("queued", "running"):
            jobs.add_metric([state], states.count(JobStatus(state)))
        yield jobs
        errors = [float(e) for (e,) in self.registry.recent("memory_prediction_error") if e]
        prediction = GaugeMetricFamily(
            "trainyard_memory_prediction_abs_error",
            "Mean |predicted - measured| / measured peak step memory, recent finished jobs",
        )
        prediction.add_metric([], sum(map(abs, errors)) / len(errors) if errors else 0.0)
        yield prediction
        sampled = GaugeMetricFamily(
            "trainyard_memory_prediction_samples",
            "Recent jobs with both a prediction and a measurement",
        )
        sampled.add_metric([], len(errors))
        yield sampled
        online = self.workers.online()
        workers = GaugeMetricFamily(
            "trainyard_workers", "Workers with a recent heartbeat", labels=["state"]
        )
        workers.add_metric(["busy"], sum(1 for w in online if w.busy_with))
        workers.add_metric(["idle"], sum(1 for w in online if not w.busy_with))
        yield workers


class TimingMiddleware:
    """Observes every request's latency, labelled by route template (not raw path)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            elapsed = time.perf_counter() - started
            REQUEST_SECONDS.labels(scope["method"], route, str(status)).observe(elapsed)
            state = scope.get("state", {})
            log.info(
                "%s %s %s",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "status": status,
                    "route": route,
                    "ms": round(elapsed * 1000, 1),
                    "owner": state.get("owner"),
                    "job_id": scope.get("path_params", {}).get("job_id"),
                },
            )
