"""Run: what fit() reports to. Artifacts go to a store, events to a sink, and a flag says stop."""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from torch import Tensor
from torchvision.utils import save_image

from shared.schemas import CheckpointRef, EventKind, JobEvent
from shared.storage import ArtifactStore, JobKeys, LocalArtifactStore
from workers.trainer import checkpoint

EventSink = Callable[[list[JobEvent]], None]

# Metric events are buffered and published in batches: one Redis round trip per flush, not
# per step, so logging never slows training.
FLUSH_INTERVAL_S = 0.25


class JobCancelled(Exception):
    def __init__(self, step: int) -> None:
        super().__init__(f"cancelled at step {step}")
        self.step = step


class Run:
    """One job's outputs: artifacts under jobs/{id}/ in `store`, events to `sink`."""

    def __init__(
        self,
        job_id: str,
        store: ArtifactStore,
        sink: EventSink,
        data_dir: str | Path = ".trainyard/data",
    ) -> None:
        self.job_id = job_id
        self.store = store
        self.data_dir = Path(data_dir)
        self.keys = JobKeys(job_id)
        self.sink = sink
        self.stop_requested = threading.Event()
        self._pending: list[JobEvent] = []
        self._last_flush = time.monotonic()
        self._last_checkpoint_step = -1

    @classmethod
    def local(cls, root: str | Path = "runs", job_id: str | None = None) -> LocalRun:
        """A run for notebooks and tests: artifacts in a folder, events kept in a list."""
        return LocalRun(job_id or uuid.uuid4().hex[:16], LocalArtifactStore(root))

    # --- events

    def emit(
        self,
        kind: EventKind,
        step: int,
        epoch: int,
        metrics: dict[str, Any] | None = None,
        info: dict[str, Any] | None = None,
        flush: bool = False,
    ) -> None:
        values = {k: float(v) for k, v in (metrics or {}).items()}  # float() syncs CUDA scalars
        event = JobEvent(
            kind=kind, time=time.time(), step=step, epoch=epoch, metrics=values, info=info or {}
        )
        self._pending.append(event)
        if flush or time.monotonic() - self._last_flush >= FLUSH_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            self.sink(batch)
        self._last_flush = time.monotonic()

    def should_stop(self) -> bool:
        return self.stop_requested.is_set()

    # --- artifacts

    def checkpoint(self, step: int, epoch: int, state: dict[str, Any]) -> None:
        if step == self._last_checkpoint_step:
            return
        manifest = checkpoint.save(self.store, self.keys, step, epoch, state)
        self._last_checkpoint_step = step
        self.emit("checkpoint", step, epoch, info={"key": manifest.key, "sha256": manifest.sha256})

    def restore(self) -> tuple[CheckpointRef, dict[str, Any]] | None:
        return checkpoint.load_latest(self.store, self.keys)

    def sample(self, step: int, epoch: int, grid: Tensor) -> None:
        buf = io.BytesIO()
        save_image(grid, buf, format="png")
        key = self.keys.sample(step)
        self.store.put_bytes(key, buf.getvalue(), "image/png")
        self.emit("sample", step, epoch, info={"key": key})

    def put_model(self, state: dict[str, Any]) -> None:
        self.store.put_bytes(self.keys.final_model, checkpoint.to_bytes(state))

    def put_json(self, key: str, model: BaseModel) -> None:
        self.store.put_bytes(key, model.model_dump_json(indent=2).encode(), "application/json")

    def put_text(self, key: str, text: str) -> None:
        self.store.put_bytes(key, text.encode(), "text/plain; charset=utf-8")


class LocalRun(Run):
    def __init__(self, job_id: str, store: ArtifactStore) -> None:
        self.events: list[JobEvent] = []
        super().__init__(job_id, store, self.events.extend)
