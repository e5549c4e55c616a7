"""The worker's Celery app: `celery -A workers.trainer.celery_app worker -Q trainyard`."""

from __future__ import annotations

from shared.config import get_settings
from shared.queue import make_celery

app = make_celery(get_settings())
app.conf.include = ["workers.trainer.tasks"]
