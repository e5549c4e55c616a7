"""Memory of a job, labelled as what it is: GPU tensor memory from torch.cuda on CUDA; on CPU,
the host's peak RSS and the profiler's peak tensor bytes of a training step."""

from __future__ import annotations

import contextlib
import gc
import logging
import re
import resource
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

from shared.schemas import MemoryReport

log = logging.getLogger(__name__)
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _host_peak_rss() -> int:
    """Peak resident set size of this process in bytes (VmHWM; ru_maxrss where /proc lacks it)."""
    try:
        match = re.search(r"VmHWM:\s+(\d+) kB", _STATUS.read_text())
        if match:
            return int(match.group(1)) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_host_peak() -> None:
    # A long-lived worker runs many jobs: writing 5 resets VmHWM so the peak is this job's own.
    # Where /proc is missing or read-only the peak spans the process's life instead.
    with contextlib.suppress(OSError):
        _CLEAR_REFS.write_text("5")


def tensor_bytes(tensors: Iterable[Any]) -> int:
    """Bytes of the distinct storages behind `tensors` (nested dicts/lists are walked)."""
    seen: dict[int, int] = {}

    def walk(obj: Any) -> None:
        if isinstance(obj, Tensor):
            storage = obj.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list | tuple):
            for v in obj:
                walk(v)

    for t in tensors:
        walk(t)
    return sum(seen.values())


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Collect first, then keep the garbage collector out of a profiled block: the profiler
    counts every free in the process, and a collection freeing unrelated tensors mid-step
    would lower the measured peak."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@contextlib.contextmanager
def profile_tensor_peak(live: Iterable[Any], out: dict[str, int]) -> Iterator[None]:
    """Measure the peak tensor bytes of the enclosed code with the PyTorch profiler.

    The profiler records each allocation and free made inside the block; their running sum
    peaks at the block's transient high-water mark. `live` are the tensors alive before the
    block (parameters, optimiser state) whose bytes are added as the baseline."""
    baseline = tensor_bytes(live)
    with no_gc(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        yield
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        if event.device_type() == torch.autograd.DeviceType.CPU:
            running += event.nbytes()
            peak = max(peak, running)
    out["peak_step_tensor_bytes"] = baseline + peak


class MemoryMeter:
    """Resets the peak counters when created and reports the peak since."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.step_peak: dict[str, int] = {}
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
        else:
            _reset_host_peak()

    def first_step(self, live: Callable[[], dict[str, Any]]) -> AbstractContextManager[bool]:
        """Around a training step: measures the first one's peak tensor bytes (the state alive
        before it plus its highest extra allocation) — by the allocator's peak counter on CUDA,
        by the profiler on CPU. `live` gives that state (called only when measuring)."""
        if self.step_peak:
            return contextlib.nullcontext(False)
        self.step_peak["peak_step_tensor_bytes"] = 0  # measure once
        if self.cuda:
            return self._cuda_step_peak(tensor_bytes(live().values()))
        return self._profiled(live().values())

    @contextlib.contextmanager
    def _profiled(self, live: Iterable[Any]) -> Iterator[bool]:
        with profile_tensor_peak(live, self.step_peak):
            yield True

    @contextlib.contextmanager
    def _cuda_step_peak(self, state_bytes: int) -> Iterator[bool]:
        torch.cuda.synchronize(self.device)
        before = torch.cuda.memory_allocated(self.device)  # data + state
        torch.cuda.reset_peak_memory_stats(self.device)
        yield True
        torch.cuda.synchronize(self.device)
        extra = torch.cuda.max_memory_allocated(self.device) - before
        self.step_peak["peak_step_tensor_bytes"] = state_bytes + extra

    def peak(self) -> dict[str, float]:
        """The peak so far, as metric values named for what they measure."""
        if self.cuda:
            return {
                "peak_gpu_allocated_bytes": float(torch.cuda.max_memory_allocated(self.device)),
                "peak_gpu_reserved_bytes": float(torch.cuda.max_memory_reserved(self.device)),
            }
        return {"peak_host_rss_bytes": float(_host_peak_rss())}

    def report(self, predicted: int | None = None) -> MemoryReport:
        """The job's memory; with the planner's prediction for this device, its error."""
        step = self.step_peak.get("peak_step_tensor_bytes") or None
        error = (predicted - step) / step if predicted and step else None
        if self.cuda:
            props = torch.cuda.get_device_properties(self.device)
            return MemoryReport(
                device=str(self.device),
                device_name=props.name,
                current_gpu_allocated_bytes=torch.cuda.memory_allocated(self.device),
                current_gpu_reserved_bytes=torch.cuda.memory_reserved(self.device),
                peak_gpu_allocated_bytes=torch.cuda.max_memory_allocated(self.device),
                peak_gpu_reserved_bytes=torch.cuda.max_memory_reserved(self.device),
                gpu_total_bytes=props.total_memory,
                peak_step_tensor_bytes=step,
                predicted_peak_bytes=predicted,
                prediction_error=error,
                note="GPU tensor memory from torch.cuda (memory_allocated / max_memory_allocated "
                "and the caching allocator's reserved bytes)",
            )
        return MemoryReport(
            device="cpu",
            device_name="cpu",
            peak_host_rss_bytes=_host_peak_rss(),
            peak_step_tensor_bytes=step,
            predicted_peak_bytes=predicted,
            prediction_error=error,
            note="CPU run, host memory, not GPU: peak RSS of the worker process, and the peak "
            "tensor bytes of the first training step from the PyTorch profiler",
        )

    def summary_text(self) -> str | None:
        """torch.cuda.memory_summary() on CUDA (saved as an artifact); None on CPU."""
        return torch.cuda.memory_summary(self.device) if self.cuda else None


def pick_device(requested: str) -> torch.device:
    """`auto` takes CUDA when present; asking for CUDA on a machine without it is an error."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("the job asks for device 'cuda' but this worker has no GPU")
        return torch.device("cuda")
    return torch.device("cpu")
