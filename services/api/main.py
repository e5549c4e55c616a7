"""The FastAPI app: `uvicorn services.api.main:app`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.api import errors, openapi
from services.api.deps import Services
from services.api.inference import predict_slots
from services.api.limits import JSON, MULTIPART, BodyRule, RequestGuard
from services.api.metrics import REGISTRY, JobsCollector, TimingMiddleware
from services.api.planner import ApiPlanner
from services.api.reconciler import Reconciler
from services.api.routes import datasets, health, inference, jobs, sweeps, ui
from services.api.routes import workers as worker_routes
from services.api.sweeps import Sweeps
from shared.auth import TokenTable
from shared.broker import BrokerQueues, make_celery
from shared.catalog import DatasetCatalog
from shared.config import Settings, connect_async_redis, connect_redis, get_settings
from shared.logs import setup_json_logging
from shared.state.events import EventStream
from shared.state.heartbeats import WorkerRegistry
from shared.state.inference import InferenceRequests
from shared.state.jobs import JobRegistry
from shared.state.plans import PlanCache
from shared.state.sweeps import SweepRegistry
from shared.storage import S3ArtifactStore


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    tokens = TokenTable.from_settings(settings)  # fail at start on a malformed token entry

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        setup_json_logging()
        redis, aredis = connect_redis(settings), connect_async_redis(settings)
        registry = JobRegistry(redis, settings.KEY_PREFIX, aredis)
        events = EventStream(redis, settings.KEY_PREFIX, aredis)
        plans = PlanCache(redis, settings.KEY_PREFIX, settings.PLAN_CACHE_TTL_S, aredis)
        workers = WorkerRegistry(redis, settings.KEY_PREFIX, aredis)
        store = S3ArtifactStore.from_settings(settings)
        celery = make_celery(settings)
        app.state.services = Services(
            settings=settings,
            tokens=tokens,
            registry=registry,
            events=events,
            workers=workers,
            store=store,
            catalog=DatasetCatalog(redis, store, settings.KEY_PREFIX, settings),
            celery=celery,
            planner=ApiPlanner(registry, plans, celery, settings, workers),
            inference=InferenceRequests(
                redis, settings.KEY_PREFIX, settings.INFERENCE_RESULT_TTL_S, aredis
            ),
            predict_slots=predict_slots(settings),
        )
        app.state.sweeps = Sweeps(
            app.state.services,
            SweepRegistry(redis, settings.KEY_PREFIX, settings.REDIS_URL),
            asyncio.get_running_loop(),
        )
        broker = BrokerQueues(redis)
        collector = JobsCollector(registry, workers, broker, settings)
        REGISTRY.register(collector)
        reconciler = Reconciler(
            app.state.services.planner, broker, celery, settings, app.state.sweeps.driver
        )
        reconciler.start()
        yield
        reconciler.stop()
        app.state.sweeps.close()
        REGISTRY.unregister(collector)
        await aredis.aclose()
        redis.close()

    app = FastAPI(
        title="trainyard",
        version="0.1.0",
        summary="Submit PyTorch training jobs; follow their metrics; fetch their artifacts.",
        description="Every /v1 route needs `Authorization: Bearer <token>`. Errors have one "
        'shape: `{"error": {"code", "message", "field"?}}`.',
        lifespan=lifespan,
    )
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(inference.router)
    app.include_router(sweeps.router)
    app.include_router(datasets.router)
    app.include_router(worker_routes.router)
    ui.mount(app)  # the dashboard at "/", after the API routes; not in the OpenAPI schema
    errors.install(app)
    openapi.install(app)  # optional parameters documented as non-null
    # Nothing of a body is read before its headers, token, media type and size are checked.
    app.add_middleware(
        RequestGuard,
        tokens=tokens,
        default=BodyRule(JSON, settings.JSON_BODY_MAX_BYTES),
        rules={
            ("POST", "/v1/datasets"): BodyRule(MULTIPART, settings.UPLOAD_MAX_BYTES),
            ("POST", "/v1/jobs/*/predict"): BodyRule(MULTIPART, settings.PREDICT_MAX_BYTES),
        },
    )
    app.add_middleware(TimingMiddleware)
    return app


app = create_app()
