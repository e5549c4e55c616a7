"""The FastAPI app: `uvicorn services.api.main:app`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.api.routes import datasets, health, jobs
from shared.catalog import DatasetCatalog, DatasetNotFound
from shared.config import Settings, connect_redis, get_settings
from shared.events import EventStream
from shared.jobs import JobNotFound, JobRegistry
from shared.queue import make_celery
from shared.reconciler import Reconciler
from shared.status import IllegalTransition
from shared.storage import S3ArtifactStore


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = connect_redis(settings)
        app.state.settings = settings
        app.state.registry = JobRegistry(redis, settings.KEY_PREFIX)
        app.state.events = EventStream(redis, settings.KEY_PREFIX)
        app.state.store = S3ArtifactStore.from_settings(settings)
        app.state.catalog = DatasetCatalog(redis, app.state.store, settings.KEY_PREFIX)
        app.state.celery = make_celery(settings)
        reconciler = Reconciler(app.state.registry, app.state.events, app.state.celery, settings)
        reconciler.start()
        yield
        reconciler.stop()
        redis.close()

    app = FastAPI(
        title="trainyard",
        version="0.1.0",
        summary="Submit PyTorch training jobs; follow their metrics; fetch their artifacts.",
        lifespan=lifespan,
    )
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(datasets.router)

    @app.exception_handler(JobNotFound)
    async def not_found(_: Request, exc: JobNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(DatasetNotFound)
    async def dataset_not_found(_: Request, exc: DatasetNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(IllegalTransition)
    async def conflict(_: Request, exc: IllegalTransition) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    return app


app = create_app()
