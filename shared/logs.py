"""Structured JSON logs (one object per line) carrying the job id of the work in hand."""

from __future__ import annotations

import contextvars
import logging
import sys

from pythonjsonlogger.json import JsonFormatter

current_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)


class JobIdFilter(logging.Filter):
    """Adds `job_id` to every record made while a job is in hand (API request or worker)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = current_job.get()
        return True


def json_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}{job_id}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    handler.addFilter(JobIdFilter())
    return handler


def setup_json_logging(level: int = logging.INFO) -> None:
    """Route the root logger (and uvicorn's) through one JSON handler."""
    root = logging.getLogger()
    root.handlers[:] = [json_handler()]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "celery", "celery.task"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # The API writes its own access log (trainyard.access: route, status, ms, owner, job id).
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
