"""The inference task: thin wiring from the "{QUEUE}-inference" queue to InferenceService."""

from __future__ import annotations

import logging
from functools import lru_cache

from shared.broker import INFER_TASK
from shared.config import connect_redis, get_settings
from shared.state.inference import InferenceRequests
from shared.storage import S3ArtifactStore
from workers.inference.service import InferenceService
from workers.trainer.celery_app import app

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _service() -> tuple[InferenceService, InferenceRequests]:
    settings = get_settings()  # connections made, and models cached, once per process
    requests = InferenceRequests(
        connect_redis(settings), settings.KEY_PREFIX, settings.INFERENCE_RESULT_TTL_S
    )
    service = InferenceService(
        S3ArtifactStore.from_settings(settings), settings.INFERENCE_CACHE_BYTES
    )
    return service, requests


@app.task(name=INFER_TASK)
def infer(request_id: str) -> None:
    """Answer one samples or predict request; its answer goes to Redis for the API to read.
    A request that expired, or was answered already (a redelivery, or the API's 504 past
    INFERENCE_TIMEOUT_S), is skipped; an answer that comes second is dropped."""
    service, requests = _service()
    request = requests.get(request_id)
    if request is None or requests.answered(request_id):
        log.info("inference request %s: expired or answered already, skipped", request_id)
        return
    images = requests.read_input(request_id) if request.kind == "predict" else None
    if not requests.answer(request_id, service.answer(request, images)):
        log.info("inference request %s: answered meanwhile or expired; dropped", request_id)
