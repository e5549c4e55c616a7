"""Typed dependencies for route handlers; the clients live on app.state, made once at start."""

from __future__ import annotations

from typing import Annotated

from celery import Celery
from fastapi import Depends, Request

from shared.catalog import DatasetCatalog
from shared.config import Settings
from shared.events import EventStream
from shared.jobs import JobRegistry
from shared.storage import ArtifactStore


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_registry(request: Request) -> JobRegistry:
    return request.app.state.registry


def get_events(request: Request) -> EventStream:
    return request.app.state.events


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


def get_celery(request: Request) -> Celery:
    return request.app.state.celery


def get_catalog(request: Request) -> DatasetCatalog:
    return request.app.state.catalog


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[JobRegistry, Depends(get_registry)]
EventsDep = Annotated[EventStream, Depends(get_events)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
CatalogDep = Annotated[DatasetCatalog, Depends(get_catalog)]
