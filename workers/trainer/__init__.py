"""The training worker: a Celery app around a plain fit() function."""
