"""The Python SDK: typed calls to the REST API, returning the shared pydantic models."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from shared.config import get_settings
from shared.schemas import (
    ArtifactPublic,
    ArtifactsPublic,
    JobEvent,
    JobEventsPublic,
    JobPublic,
    JobSpec,
    JobsPublic,
    Readiness,
)


class ApiError(Exception):
    """The API answered with an error status."""

    def __init__(self, status_code: int, detail: Any) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class Client:
    """`Client()` talks to the API named by TRAINYARD_API_URL (or .trainyard/stack.env)."""

    def __init__(self, url: str | None = None, timeout: float = 30.0) -> None:
        self.url = (url or get_settings().API_URL).rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail)
        return response.json()

    def submit(self, spec: JobSpec | dict[str, Any]) -> JobPublic:
        """Queue a job; `spec` is a JobSpec or its JSON form."""
        body = spec.model_dump(mode="json") if isinstance(spec, BaseModel) else spec
        return JobPublic.model_validate(self._call("POST", "/v1/jobs", json=body))

    def get(self, job_id: str) -> JobPublic:
        return JobPublic.model_validate(self._call("GET", f"/v1/jobs/{job_id}"))

    def list_jobs(self, offset: int = 0, limit: int = 50) -> JobsPublic:
        return JobsPublic.model_validate(
            self._call("GET", "/v1/jobs", params={"offset": offset, "limit": limit})
        )

    def cancel(self, job_id: str) -> JobPublic:
        return JobPublic.model_validate(self._call("POST", f"/v1/jobs/{job_id}/cancel"))

    def metrics(
        self, job_id: str, kind: str | None = None, after: str | None = None
    ) -> list[JobEvent]:
        params = {k: v for k, v in (("kind", kind), ("after", after)) if v}
        return JobEventsPublic.model_validate(
            self._call("GET", f"/v1/jobs/{job_id}/metrics", params=params)
        ).data

    def artifacts(self, job_id: str) -> list[ArtifactPublic]:
        return ArtifactsPublic.model_validate(
            self._call("GET", f"/v1/jobs/{job_id}/artifacts")
        ).data

    def download(self, job_id: str, dest: str | Path) -> list[Path]:
        """Fetch every artifact of the job through its presigned URL into `dest`."""
        saved = []
        for artifact in self.artifacts(job_id):
            path = Path(dest) / artifact.key.removeprefix(f"jobs/{job_id}/")
            path.parent.mkdir(parents=True, exist_ok=True)
            with httpx.stream("GET", artifact.url, timeout=60) as response:
                response.raise_for_status()
                with path.open("wb") as f:
                    for chunk in response.iter_bytes():
                        f.write(chunk)
            saved.append(path)
        return saved

    def wait(
        self,
        job_id: str,
        timeout: float = 3600,
        poll: float = 0.5,
        on_update: Callable[[JobPublic], None] | None = None,
    ) -> JobPublic:
        """Poll until the job reaches a terminal state; TimeoutError if it does not in time."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if on_update:
                on_update(job)
            if job.status.is_terminal():
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status.value} after {timeout:.0f}s")
            time.sleep(poll)

    def ready(self) -> Readiness:
        response = self.http.get("/readyz")
        return Readiness.model_validate(response.json())
