"""Peak memory of a job, labelled as what it is: GPU tensor memory on CUDA, host RSS on CPU."""

from __future__ import annotations

import contextlib
import re
import resource
from pathlib import Path

import torch

from shared.schemas import MemoryReport

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


class MemoryMeter:
    """Resets the peak counters when created and reports the peak since."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
        else:
            _reset_host_peak()

    def peak(self) -> dict[str, float]:
        """The peak so far, as metric values named for what they measure."""
        if self.cuda:
            return {
                "peak_gpu_allocated_bytes": float(torch.cuda.max_memory_allocated(self.device)),
                "peak_gpu_reserved_bytes": float(torch.cuda.max_memory_reserved(self.device)),
            }
        return {"peak_host_rss_bytes": float(_host_peak_rss())}

    def report(self) -> MemoryReport:
        if self.cuda:
            props = torch.cuda.get_device_properties(self.device)
            return MemoryReport(
                device=str(self.device),
                device_name=props.name,
                peak_gpu_allocated_bytes=torch.cuda.max_memory_allocated(self.device),
                peak_gpu_reserved_bytes=torch.cuda.max_memory_reserved(self.device),
                gpu_total_bytes=props.total_memory,
                note="peak GPU tensor memory (torch.cuda.max_memory_allocated / _reserved)",
            )
        return MemoryReport(
            device="cpu",
            device_name="cpu",
            peak_host_rss_bytes=_host_peak_rss(),
            note="CPU run: peak host resident memory of the worker process, not GPU memory",
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
