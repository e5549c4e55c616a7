"""Run: what fit() reports to. Artifacts go to a store, events to a sink, and a stop reason
(cancel, shutdown, lost lease) tells the loop to stop."""

from __future__ import annotations

import io
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from pydantic import BaseModel
from torch import Tensor

from shared.schemas import CheckpointRef, EventKind, HealthWarning, JobEvent
from shared.storage import ArtifactStore, JobKeys, LocalArtifactStore
from workers.trainer import checkpoint, cpu

EventSink = Callable[[list[JobEvent]], None]
StopReason = Literal["cancel", "shutdown", "lease_lost", "pruned"]  # pruned: by a sweep

# Metric events are buffered and published in batches: one Redis round trip per flush, not
# per step, so logging never slows training.
FLUSH_INTERVAL_S = 0.25
# Sample grids are small: zlib's fastest level encodes them in half the CPU of PIL's default
# (6), and the files come out no bigger (MNIST grids: 27 vs 33 KB).
PNG_COMPRESS_LEVEL = 1


class JobStopped(Exception):
    """The loop stopped before the end: cancelled, handed back on shutdown, lease lost, or
    pruned by its sweep (`detail`: the pruner's reason)."""

    def __init__(self, step: int, reason: StopReason, detail: str | None = None) -> None:
        super().__init__(f"stopped at step {step}: {detail or reason}")
        self.step = step
        self.reason = reason
        self.detail = detail


class Uploader:
    """One background thread that writes artifacts in order, so training never waits on
    object storage. A failure is raised on the training thread at its next submit or drain."""

    def __init__(self) -> None:
        # At most 2 writes wait (each may hold a checkpoint): bounded memory, gentle backpressure.
        self.tasks: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="uploader", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (task := self.tasks.get()) is not None:
            try:
                if self.error is None:  # after a failure, later writes are skipped
                    task()
            except BaseException as exc:
                self.error = exc
            finally:
                self.tasks.task_done()
        self.tasks.task_done()

    def submit(self, task: Callable[[], None]) -> None:
        self._raise()
        self.tasks.put(task)  # blocks while 2 are pending

    def drain(self) -> None:
        """Wait until everything submitted is written; raise what failed."""
        self.tasks.join()
        self._raise()

    def close(self) -> None:
        self.tasks.put(None)

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error


class Run:
    """One job's outputs: artifacts under jobs/{id}/ in `store`, events to `sink`."""

    def __init__(
        self,
        job_id: str,
        store: ArtifactStore,
        sink: EventSink,
        data_dir: str | Path = ".trainyard/data",
        writer_threads: int | None = None,
    ) -> None:
        self.job_id = job_id
        self.store = store
        self.data_dir = Path(data_dir)
        self.objects = JobKeys(job_id)  # its S3 object keys
        self.sink = sink
        # Which start of the job this is (1 = the first); every event carries it. A worker's
        # run takes it from the job's lease.
        self.attempt = 1
        # Set from another thread (cancel listener, heartbeat, signal handler); read each step.
        self.stop_reason: StopReason | None = None
        self.stop_detail: str | None = None  # why, when a sweep's pruner stopped it
        # The planner's prediction for this device, set by the worker: memory.json compares.
        self.predicted_peak_bytes: int | None = None
        # Health warnings raised so far (a worker's run starts with the record's).
        self.warnings: list[HealthWarning] = []
        self._pending: list[JobEvent] = []
        self._events_lock = threading.Lock()  # the uploader thread emits too
        self._last_flush = time.monotonic()
        self._last_checkpoint_step = -1
        self._last_sample_step = -1
        self.uploader = Uploader()
        # Checkpoints are serialised (torch.save, sha256) on a thread of their own, so one
        # serialises while the one before it uploads, when this process has the cores for two
        # writer threads (cpu.py; `writer_threads` overrides); with one, the uploader
        # serialises before it writes.
        writers = writer_threads or cpu.current().writer_threads
        self.serializer = (
            ThreadPoolExecutor(1, thread_name_prefix="checkpoint-serializer")
            if writers > 1
            else None
        )

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
            kind=kind,
            time=time.time(),
            attempt=self.attempt,
            step=step,
            epoch=epoch,
            metrics=values,
            info=info or {},
        )
        with self._events_lock:
            self._pending.append(event)
        if flush or time.monotonic() - self._last_flush >= FLUSH_INTERVAL_S:
            self.flush()

    def warn(self, warning: HealthWarning, epoch: int) -> None:
        """A training-health warning, as a `warning` event; each code is raised once per job."""
        if any(w.code == warning.code for w in self.warnings):
            return
        self.warnings.append(warning)
        self.emit("warning", warning.step, epoch, info=warning.model_dump(), flush=True)

    def flush(self) -> None:
        with self._events_lock:
            if self._pending:
                batch, self._pending = self._pending, []
                self.sink(batch)
            self._last_flush = time.monotonic()

    def drain(self) -> None:
        """Wait for background writes (checkpoints, grids) and publish pending events."""
        self.uploader.drain()
        self.flush()

    def close(self) -> None:
        self.uploader.close()
        if self.serializer is not None:
            self.serializer.shutdown(wait=False)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- stopping

    def after_step(self, step: int, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """A step's losses pass through here; a worker's run applies a test's fault plan."""
        return losses

    def should_stop(self, step: int) -> bool:
        """Checked after every step (cheap: a field set by other threads)."""
        return self.stop_reason is not None

    def evaluated(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        """Called after each epoch's evaluation; a sweep's run may set a stop reason here
        (pruning), which the loop obeys before its next step."""

    def stop(self, step: int, epoch: int, state: Callable[[], dict[str, Any]]) -> JobStopped:
        """Wind down: on shutdown, checkpoint this step first so another worker resumes here."""
        reason = self.stop_reason or "cancel"
        if reason == "shutdown":
            self.checkpoint(step, epoch, state())
        if reason != "lease_lost":
            self.drain()  # the hand-back checkpoint is committed before the job is requeued
        self.emit("log", step, epoch, info={"stopped": reason}, flush=reason != "lease_lost")
        return JobStopped(step, reason, self.stop_detail)

    # --- artifacts

    def checkpoint(self, step: int, epoch: int, state: dict[str, Any]) -> None:
        if step == self._last_checkpoint_step:
            return
        # Events up to a committed checkpoint are published first: a worker that dies after
        # the commit leaves no gap, since its successor resumes from this step.
        self.flush()
        # The snapshot is taken here (tensor copies); serialising and writing go behind.
        snapshot = checkpoint.snapshot(state)
        serialized = (
            self.serializer.submit(checkpoint.serialize, snapshot) if self.serializer else None
        )

        def commit() -> None:
            data, sha256 = serialized.result() if serialized else checkpoint.serialize(snapshot)
            self.before_commit(step)
            manifest = checkpoint.save_bytes(self.store, self.objects, step, epoch, data, sha256)
            self.after_commit(step)
            self.emit(
                "checkpoint", step, epoch, info={"key": manifest.key, "sha256": manifest.sha256}
            )

        self.uploader.submit(commit)
        self._last_checkpoint_step = step

    def before_commit(self, step: int) -> None:
        """Called before a checkpoint is committed; a job's run checks its lease here."""

    def after_commit(self, step: int) -> None:
        """Called once latest.json names the checkpoint of `step`."""

    @property
    def last_checkpoint_step(self) -> int | None:
        """The newest checkpoint submitted (committed once drain() returns), or None."""
        return self._last_checkpoint_step if self._last_checkpoint_step >= 0 else None

    def restore(self) -> tuple[CheckpointRef, dict[str, Any]] | None:
        found = checkpoint.load_latest(self.store, self.objects)
        if found is not None:
            self._last_checkpoint_step = found[0].step
        return found

    def sample(self, step: int, epoch: int, grid: Tensor) -> None:
        """A make_grid image, saved as PNG behind. It is made 8-bit here, as save_image does,
        because torch's parallel ops on a writer thread start an OpenMP team of their own
        that competes with the training step's (measured: bench/RESULTS.md, "Overhead").
        A step's grid is written once: the loop's last interval and the end can be one step."""
        if step == self._last_sample_step:
            return
        self._last_sample_step = step
        pixels = grid.detach().mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0)
        hwc = pixels.to("cpu", torch.uint8).numpy()

        def write() -> None:
            buf = io.BytesIO()
            Image.fromarray(hwc).save(buf, format="png", compress_level=PNG_COMPRESS_LEVEL)
            key = self.objects.sample(step)
            self.store.put_bytes(key, buf.getvalue(), "image/png")
            self.emit("sample", step, epoch, info={"key": key})

        self.uploader.submit(write)

    def put_model(self, state: dict[str, Any]) -> None:
        self.store.put_bytes(self.objects.final_model, checkpoint.to_bytes(state))

    def put_best(self, state: dict[str, Any]) -> None:
        self.store.put_bytes(self.objects.best_model, checkpoint.to_bytes(state))

    def put_json(self, key: str, model: BaseModel) -> None:
        self.store.put_bytes(key, model.model_dump_json(indent=2).encode(), "application/json")

    def put_text(self, key: str, text: str) -> None:
        self.store.put_bytes(key, text.encode(), "text/plain; charset=utf-8")


class LocalRun(Run):
    def __init__(
        self, job_id: str, store: ArtifactStore, writer_threads: int | None = None
    ) -> None:
        self.events: list[JobEvent] = []
        super().__init__(job_id, store, self.events.extend, writer_threads=writer_threads)
