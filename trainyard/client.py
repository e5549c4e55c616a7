"""The Python SDK: typed calls to the REST API, returning the shared pydantic models.

`Client()` finds the API and token in TRAINYARD_API_URL / TRAINYARD_API_TOKEN, or in
.trainyard/stack.env (written by `make up`). It needs httpx, httpx-sse and pydantic only
(`pip install .` without extras): never the server's Settings (shared/config.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
from httpx_sse import connect_sse
from pydantic import BaseModel

from shared.schemas import (
    ArtifactLink,
    ArtifactPublic,
    ArtifactsPublic,
    DatasetPublic,
    DatasetsPublic,
    InferencePending,
    JobEvent,
    JobEventsPublic,
    JobPublic,
    JobSpec,
    JobsPublic,
    PredictionsPublic,
    Readiness,
    SamplesPublic,
    SweepPublic,
    SweepSpec,
    SweepsPublic,
)

# The local stack's addresses and token, written by `make up` (devstack), read from the cwd.
STACK_ENV = Path(".trainyard/stack.env")
DEFAULT_API_URL = "http://127.0.0.1:8000"
# How long sample() and predict() follow a 202 (the inference worker is busy or loading a
# model) by polling before TimeoutError.
INFERENCE_WAIT_S = 120.0
Answer = TypeVar("Answer", bound=BaseModel)
# A checkpoint of a finished job: "final" (final/model.pt), "best" (final/best.pt) or a step.
CheckpointRef = Literal["best", "final"] | int


def api_defaults(stack_env: Path = STACK_ENV) -> tuple[str, str | None]:
    """The API's (url, token) when the caller gives none: each from the environment
    (TRAINYARD_API_URL, TRAINYARD_API_TOKEN), else from `stack_env` (KEY=VALUE lines; a
    missing or unreadable file counts as empty), else http://127.0.0.1:8000 and no token."""
    found = {**_read_env_file(stack_env), **os.environ}
    return found.get("TRAINYARD_API_URL", DEFAULT_API_URL), found.get("TRAINYARD_API_TOKEN")


def _read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (blank lines, `#` comments, `export ` and quotes allowed) as a dict."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return {}
    values = {}
    for line in text.splitlines():
        key, sep, value = line.strip().removeprefix("export ").partition("=")
        if not sep or key.startswith("#"):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


class ApiError(Exception):
    """The API answered with an error: `code`, `message` and maybe the `field` at fault."""

    def __init__(
        self, status_code: int, code: str, message: str, field: str | None = None, body: Any = None
    ) -> None:
        where = f" ({field})" if field else ""
        super().__init__(f"HTTP {status_code} {code}{where}: {message}")
        self.status_code, self.code, self.message, self.field, self.body = (
            status_code,
            code,
            message,
            field,
            body,
        )


class Client:
    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = 30.0
    ) -> None:
        """`url` and `token` default to api_defaults(); `timeout` is in seconds per request."""
        default_url, default_token = api_defaults()
        self.url = (url or default_url).rstrip("/")
        token = token if token is not None else default_token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        _raise_for(response)
        return response.json()

    # --- jobs

    def submit(
        self, spec: JobSpec | dict[str, Any], idempotency_key: str | None = None
    ) -> JobPublic:
        """Queue a job; `spec` is a JobSpec or its JSON form. With `idempotency_key`, retries
        of the same submission return the same job. A new model/data shape may come back
        `being_planned` (pending.reason says so): it is routed when the planner's probe
        ends, or fails with the reason a 422 would give (ApiError, for a cached shape)."""
        body = spec.model_dump(mode="json") if isinstance(spec, BaseModel) else spec
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return JobPublic.model_validate(self._call("POST", "/v1/jobs", json=body, headers=headers))

    def get(self, job_id: str) -> JobPublic:
        return JobPublic.model_validate(self._call("GET", f"/v1/jobs/{job_id}"))

    def list_jobs(
        self,
        limit: int = 50,
        cursor: str | None = None,
        status: str | None = None,
        task: str | None = None,
    ) -> JobsPublic:
        """One page, newest first; pass the page's next_cursor for the next one."""
        params = {
            k: v
            for k, v in {"limit": limit, "cursor": cursor, "status": status, "task": task}.items()
            if v is not None
        }
        return JobsPublic.model_validate(self._call("GET", "/v1/jobs", params=params))

    def iter_jobs(self, status: str | None = None, task: str | None = None) -> Iterator[JobPublic]:
        """Every job, newest first, page by page."""
        cursor: str | None = None
        while True:
            page = self.list_jobs(200, cursor, status, task)
            yield from page.data
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def cancel(self, job_id: str) -> JobPublic:
        return JobPublic.model_validate(self._call("POST", f"/v1/jobs/{job_id}/cancel"))

    def metrics(
        self, job_id: str, kind: str | None = None, after: str | None = None
    ) -> list[JobEvent]:
        params = {k: v for k, v in (("kind", kind), ("after", after)) if v}
        return JobEventsPublic.model_validate(
            self._call("GET", f"/v1/jobs/{job_id}/metrics", params=params)
        ).data

    def events(self, job_id: str, last_event_id: str | None = None) -> Iterator[JobEvent]:
        """Live events over SSE until the job ends; resumes after `last_event_id`."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        with connect_sse(
            self.http,
            "GET",
            f"/v1/jobs/{job_id}/events",
            headers=headers,
            timeout=httpx.Timeout(30.0, read=None),
        ) as source:
            _raise_for(source.response)
            for sse in source.iter_sse():
                if not sse.data:  # a heartbeat: httpx-sse yields one once an id was seen
                    continue
                event = JobEvent.model_validate_json(sse.data)
                event.id = sse.id or event.id
                yield event

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

    # --- sweeps (docs/sweeps.md): many trials of one base spec, each an ordinary job

    def submit_sweep(
        self, spec: SweepSpec | dict[str, Any], idempotency_key: str | None = None
    ) -> SweepPublic:
        """Start a sweep (POST /v1/sweeps); its trials are jobs tagged with its id."""
        body = (
            spec.model_dump(mode="json", exclude_unset=True)
            if isinstance(spec, BaseModel)
            else spec
        )
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return SweepPublic.model_validate(
            self._call("POST", "/v1/sweeps", json=body, headers=headers)
        )

    def sweep(self, sweep_id: str) -> SweepPublic:
        """One sweep: counts by status, the best trial so far, every trial."""
        return SweepPublic.model_validate(self._call("GET", f"/v1/sweeps/{sweep_id}"))

    def sweeps(self, limit: int = 50) -> list[SweepPublic]:
        """Your sweeps, newest first."""
        return SweepsPublic.model_validate(
            self._call("GET", "/v1/sweeps", params={"limit": limit})
        ).data

    def cancel_sweep(self, sweep_id: str) -> SweepPublic:
        """No more trials; every trial not finished is cancelled."""
        return SweepPublic.model_validate(self._call("POST", f"/v1/sweeps/{sweep_id}/cancel"))

    def wait_sweep(self, sweep_id: str, timeout: float = 3600, poll: float = 1.0) -> SweepPublic:
        """Poll until the sweep has ended (every trial finished); TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while (sweep := self.sweep(sweep_id)).finished_at is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"sweep {sweep_id} still {sweep.status} after {timeout:.0f}s")
            time.sleep(poll)
        return sweep

    # --- artifacts

    def artifacts(self, job_id: str) -> list[ArtifactPublic]:
        return ArtifactsPublic.model_validate(
            self._call("GET", f"/v1/jobs/{job_id}/artifacts")
        ).data

    def download(self, job_id: str, dest: str | Path, through_api: bool = False) -> list[Path]:
        """Fetch every artifact into `dest`: from object storage by presigned URL, or streamed
        through the API (`through_api`) when storage is not reachable from here."""
        return [
            self._fetch(
                job_id, artifact.path, artifact.url, Path(dest) / artifact.path, through_api
            )
            for artifact in self.artifacts(job_id)
        ]

    # --- inference: samples from a trained GAN, predictions of a trained classifier

    def sample(
        self,
        job_id: str,
        n: int = 64,
        labels: int | Sequence[int] | None = None,
        seed: int = 0,
        checkpoint: CheckpointRef = "final",
        wait_s: float = INFERENCE_WAIT_S,
        out: str | Path | None = None,
    ) -> SamplesPublic:
        """Draw `n` images from a succeeded GAN job's generator (POST /v1/jobs/{id}/samples).
        `labels` (cGANs): one label for every image, or exactly n; none cycles 0..K-1. The
        same request gives the same images (`seed`). The grid PNG and the .npz (`images`
        uint8 N x C x H x W, `labels`) are stored among the job's artifacts under
        samples-on-demand/; with `out`, both are also downloaded into that folder
        (download_samples). A 202 (the inference worker is busy) is polled for up to
        `wait_s` seconds, then TimeoutError."""
        body: dict[str, Any] = {"n": n, "seed": seed, "checkpoint": checkpoint}
        if labels is not None:
            body["labels"] = [labels] if isinstance(labels, int) else list(labels)
        samples = self._inference(
            SamplesPublic, wait_s, "POST", f"/v1/jobs/{job_id}/samples", json=body
        )
        if out is not None:
            self.download_samples(samples, out)
        return samples

    def predict(
        self,
        job_id: str,
        image: str | Path | bytes,
        checkpoint: CheckpointRef = "final",
        wait_s: float = INFERENCE_WAIT_S,
    ) -> PredictionsPublic:
        """Classify images with a succeeded classifier job (POST /v1/jobs/{id}/predict):
        `image` is a PNG or JPEG (a path or its bytes; normalised as uploads are, resized to
        the data set's size), or an .npz holding one uint8 array of up to 1,024 images
        (N x C x H x W or N x H x W) of the data set's shape. One row of class probabilities
        per image. A 202 is polled for up to `wait_s` seconds, then TimeoutError."""
        if isinstance(image, bytes):
            data, name = image, _upload_name(image)
        else:
            data, name = Path(image).read_bytes(), Path(image).name
        files = {"file": (name, data, _media_type(data))}
        return self._inference(
            PredictionsPublic,
            wait_s,
            "POST",
            f"/v1/jobs/{job_id}/predict",
            files=files,
            params={"checkpoint": str(checkpoint)},
        )

    def download_samples(
        self, samples: SamplesPublic, dest: str | Path, through_api: bool = False
    ) -> list[Path]:
        """Save a samples answer's grid PNG and .npz into `dest` under their artifact paths
        (samples-on-demand/<name>.png, .npz): by presigned URL, or `through_api`."""
        return [
            self.fetch_artifact(samples.job_id, link, Path(dest) / link.path, through_api)
            for link in (samples.grid, samples.images)
        ]

    def fetch_artifact(
        self, job_id: str, link: ArtifactLink, path: str | Path, through_api: bool = False
    ) -> Path:
        """Save one stored object of a samples answer (`grid`, `images`) as the file `path`."""
        return self._fetch(job_id, link.path, link.url, Path(path), through_api)

    def _fetch(self, job_id: str, artifact: str, url: str, path: Path, through_api: bool) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        if through_api:
            stream = self.http.stream("GET", f"/v1/jobs/{job_id}/artifacts/{artifact}")
        else:
            stream = httpx.stream("GET", url, timeout=60)
        with stream as response:
            _raise_for(response)
            with path.open("wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
        return path

    def _inference(
        self, model: type[Answer], wait_s: float, method: str, path: str, **kwargs: Any
    ) -> Answer:
        """Call an inference route; follow a 202 by polling its `poll` URL until the answer
        (or its error, raised as ApiError) or until `wait_s` has passed (TimeoutError)."""
        deadline = time.monotonic() + wait_s
        response = self.http.request(method, path, **kwargs)
        delay = 0.05
        while True:
            _raise_for(response)
            if response.status_code != 202:
                return model.model_validate(response.json())
            pending = InferencePending.model_validate(response.json())
            if time.monotonic() + delay > deadline:
                raise TimeoutError(
                    f"inference request {pending.request_id} still pending after {wait_s:g}s "
                    f"(poll {pending.poll})"
                )
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
            response = self.http.get(pending.poll)

    # --- data sets

    def upload_dataset(self, *files: str | Path, name: str | None = None) -> DatasetPublic:
        """Upload IDX files, one .npz, or one .zip of class folders."""
        parts = [
            ("files", (Path(f).name, Path(f).read_bytes(), "application/octet-stream"))
            for f in files
        ]
        data = {"name": name} if name else {}
        return DatasetPublic.model_validate(
            self._call("POST", "/v1/datasets", files=parts, data=data, timeout=600)
        )

    def datasets(self) -> list[DatasetPublic]:
        return DatasetsPublic.model_validate(self._call("GET", "/v1/datasets")).data

    # --- health

    def ready(self) -> Readiness:
        return Readiness.model_validate(self.http.get("/readyz").json())


def _media_type(data: bytes) -> str:
    """What the bytes are by their magic number: PNG, JPEG, else octet-stream (an .npz)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    return "application/octet-stream"


def _upload_name(data: bytes) -> str:
    """A file name for bytes given without one, by their magic number."""
    kind = _media_type(data)
    return {"image/png": "image.png", "image/jpeg": "image.jpg"}.get(kind, "images.npz")


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    response.read()
    try:
        body = response.json()
        error = body.get("error", {})
        raise ApiError(
            response.status_code,
            error.get("code", "error"),
            error.get("message", response.text),
            error.get("field"),
            body,
        )
    except ValueError:
        raise ApiError(response.status_code, "error", response.text) from None
