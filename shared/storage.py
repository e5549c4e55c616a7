"""Artifact storage behind one small interface, and the one place object keys are built."""

from __future__ import annotations

import io
import logging
import mimetypes
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import certifi
import urllib3
from minio import Minio
from minio.error import S3Error, ServerError
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from shared.config import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
CHUNK = 1 << 20


@dataclass(frozen=True)
class JobKeys:
    """Object keys of one job's artifacts. Step numbers are zero-padded so keys sort by step."""

    job_id: str

    @property
    def prefix(self) -> str:
        return f"jobs/{self.job_id}/"

    def checkpoint(self, step: int) -> str:
        return f"{self.prefix}checkpoints/step-{step:08d}.pt"

    @property
    def manifest(self) -> str:
        return f"{self.prefix}checkpoints/latest.json"

    def sample(self, step: int) -> str:
        return f"{self.prefix}samples/step-{step:08d}.png"

    @property
    def final_model(self) -> str:
        return f"{self.prefix}final/model.pt"

    @property
    def best_model(self) -> str:
        return f"{self.prefix}final/best.pt"

    @property
    def summary(self) -> str:
        return f"{self.prefix}summary.json"

    @property
    def memory(self) -> str:
        return f"{self.prefix}memory.json"

    @property
    def memory_summary(self) -> str:
        return f"{self.prefix}memory_summary.txt"

    def report(self, name: str) -> str:
        """Evaluation reports beside the summary: confusion.json, confusion.png."""
        return f"{self.prefix}{name}"

    def on_demand(self, name: str) -> str:
        """Samples drawn on request (POST /v1/jobs/{id}/samples): <name>.png and <name>.npz."""
        return f"{self.prefix}samples-on-demand/{name}"


@dataclass(frozen=True)
class DatasetKeys:
    """Object keys of a data set: uploads by id, and the shared cache of downloaded ones."""

    dataset_id: str

    @classmethod
    def builtin(cls, name: str) -> DatasetKeys:
        return cls(f"builtin/{name}")

    @property
    def prefix(self) -> str:
        return f"datasets/{self.dataset_id}/"

    @property
    def data(self) -> str:
        return f"{self.prefix}data.npz"

    @property
    def meta(self) -> str:
        return f"{self.prefix}meta.json"

    def file(self, name: str) -> str:
        return f"{self.prefix}{name}"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class ArtifactNotFound(KeyError):
    pass


class StorageUnavailable(RuntimeError):
    """Object storage stayed unreachable for the whole retry budget."""


_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"}


def _transient(exc: BaseException) -> bool:
    """Worth retrying: the server is down, restarting or overloaded; not a 4xx."""
    if isinstance(exc, S3Error):
        return exc.code in _TRANSIENT_CODES
    return isinstance(exc, ServerError | urllib3.exceptions.HTTPError | OSError)


class ArtifactStore(ABC):
    """What trainyard needs from object storage; S3 in production, a folder in notebooks."""

    @abstractmethod
    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        """Store `data` under `key`, replacing any object there."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; ArtifactNotFound if absent."""

    @abstractmethod
    def list_prefix(self, prefix: str) -> list[ObjectInfo]:
        """Every object under `prefix`, sorted by key."""

    @abstractmethod
    def open(self, key: str) -> tuple[Iterator[bytes], int, str]:
        """(chunks, size, content type) to stream the object; ArtifactNotFound if absent."""

    @abstractmethod
    def url(self, key: str, expires: timedelta) -> str:
        """A URL a client can GET the object from, valid for `expires`."""

    @abstractmethod
    def ping(self) -> None:
        """Raise unless the store is reachable and its bucket exists."""

    def exists(self, key: str) -> bool:
        try:
            self.get_bytes(key)
        except ArtifactNotFound:
            return False
        return True


class S3ArtifactStore(ArtifactStore):
    """Any S3-compatible server (MinIO, SeaweedFS, AWS) through the `minio` SDK. Transient
    failures are retried with backoff for `retry_s` seconds, then StorageUnavailable."""

    def __init__(
        self, client: Minio, bucket: str, presign_client: Minio | None = None, retry_s: float = 60.0
    ) -> None:
        self.client = client
        self.bucket = bucket
        # Presigned URLs are signed for the host clients will use, which may differ from the
        # in-cluster endpoint; signing is local, so this client never opens a connection.
        self.presign_client = presign_client or client
        self.retry_s = retry_s

    @classmethod
    def from_settings(cls, settings: Settings, retry_s: float | None = None) -> S3ArtifactStore:
        # Bounded timeouts: a hung server must fail a call, not block training for minutes.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5, read=60),
            retries=urllib3.Retry(
                total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(),
        )

        def client(endpoint: str) -> Minio:
            return Minio(
                endpoint,
                access_key=settings.S3_ACCESS_KEY,
                secret_key=settings.S3_SECRET_KEY,
                secure=settings.S3_SECURE,
                region=settings.S3_REGION,
                http_client=http,
            )

        public = settings.S3_PUBLIC_ENDPOINT
        return cls(
            client(settings.S3_ENDPOINT),
            settings.S3_BUCKET,
            client(public) if public else None,
            settings.S3_RETRY_S if retry_s is None else retry_s,
        )

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        """Run `call`, retrying transient failures with backoff for up to retry_s seconds."""
        if self.retry_s <= 0:
            return call()
        retrying = Retrying(
            stop=stop_after_delay(self.retry_s),
            wait=wait_exponential(multiplier=0.25, max=5),
            retry=retry_if_exception(_transient),
            before_sleep=lambda state: log.warning(
                "S3 %s failed (%s); retrying", what, state.outcome and state.outcome.exception()
            ),
            reraise=True,
        )
        try:
            return retrying(call)
        except Exception as exc:
            if _transient(exc):
                raise StorageUnavailable(
                    f"object storage unreachable for {self.retry_s:.0f}s ({what}): {exc}"
                ) from exc
            raise

    def ensure_bucket(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            self.client.make_bucket(self.bucket)

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        def put() -> None:
            self.client.put_object(
                self.bucket, key, io.BytesIO(data), len(data), content_type=content_type
            )

        self._retrying(f"PUT {key}", put)

    def get_bytes(self, key: str) -> bytes:
        def get() -> bytes:
            try:
                response = self.client.get_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject"):
                    raise ArtifactNotFound(key) from exc
                raise
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._retrying(f"GET {key}", get)

    def list_prefix(self, prefix: str) -> list[ObjectInfo]:
        def listing() -> list[ObjectInfo]:
            objects = self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
            return [ObjectInfo(o.object_name or "", o.size or 0) for o in objects]

        return sorted(self._retrying(f"LIST {prefix}", listing), key=lambda o: o.key)

    def open(self, key: str) -> tuple[Iterator[bytes], int, str]:
        def start() -> Any:
            try:
                return self.client.get_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject"):
                    raise ArtifactNotFound(key) from exc
                raise

        response = self._retrying(f"GET {key}", start)

        def chunks() -> Iterator[bytes]:
            try:
                yield from response.stream(CHUNK)
            finally:
                response.close()
                response.release_conn()

        size = int(response.headers.get("Content-Length", 0))
        return chunks(), size, response.headers.get("Content-Type", "application/octet-stream")

    def exists(self, key: str) -> bool:
        """A HEAD of the object: nothing of its bytes is read."""

        def head() -> bool:
            try:
                self.client.stat_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                    return False
                raise
            return True

        return self._retrying(f"HEAD {key}", head)

    def url(self, key: str, expires: timedelta) -> str:
        return self.presign_client.presigned_get_object(self.bucket, key, expires=expires)

    def ping(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            raise RuntimeError(f"bucket {self.bucket!r} does not exist")


class LocalArtifactStore(ArtifactStore):
    """A folder on disk: for running fit() in a notebook or a test without an S3 server."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"key escapes the store: {key!r}")
        return path

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # atomic, like an S3 PUT

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise ArtifactNotFound(key) from exc

    def list_prefix(self, prefix: str) -> list[ObjectInfo]:
        found = [
            ObjectInfo(p.relative_to(self.root).as_posix(), p.stat().st_size)
            for p in self.root.rglob("*")
            if p.is_file() and not p.name.endswith(".tmp")
        ]
        return sorted((o for o in found if o.key.startswith(prefix)), key=lambda o: o.key)

    def open(self, key: str) -> tuple[Iterator[bytes], int, str]:
        path = self._path(key)
        if not path.is_file():
            raise ArtifactNotFound(key)

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as f:
                while block := f.read(CHUNK):
                    yield block

        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return chunks(), path.stat().st_size, kind

    def url(self, key: str, expires: timedelta) -> str:
        return self._path(key).as_uri()

    def ping(self) -> None:
        if not self.root.is_dir():
            raise RuntimeError(f"{self.root} is not a folder")

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
