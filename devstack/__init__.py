"""The local stack: real Redis, a real S3 server (SeaweedFS), the API and Celery workers.

Used by `make up` / `make down` / `make demo` and by the integration tests, so the tests run
exactly what users run."""
