"""fit() is a plain function: run it against a folder store, no services."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from shared.schemas import ClassifierSpec, JobSummary
from shared.storage import LocalArtifactStore
from workers.trainer import checkpoint
from workers.trainer.loop import fit
from workers.trainer.models import build_model
from workers.trainer.run import JobCancelled, LocalRun, Run

SMOKE = ClassifierSpec(
    dataset="fake",
    epochs=2,
    batch_size=64,
    checkpoint_every=3,
    sample_every=4,
    log_every=2,
    device="cpu",
)  # 8 steps per epoch


def test_fit_writes_every_artifact_and_event(tmp_path: Path) -> None:
    run = Run.local(tmp_path, job_id="smoke")
    summary = fit(SMOKE, run)

    assert summary.steps == 16 and summary.epochs == 2
    keys = {o.key for o in run.store.list_prefix("jobs/smoke/")}
    for step in (3, 6, 9, 12, 15, 16):
        assert run.keys.checkpoint(step) in keys
    for step in (4, 8, 12, 16):
        assert run.keys.sample(step) in keys
    assert {run.keys.manifest, run.keys.final_model, run.keys.summary, run.keys.memory} <= keys
    assert JobSummary.model_validate_json(run.store.get_bytes(run.keys.summary)) == summary

    kinds = [e.kind for e in run.events]
    assert kinds.count("epoch") == 2
    steps = [e for e in run.events if e.kind == "step"]
    assert [e.step for e in steps] == list(range(2, 17, 2))
    assert {"loss", "images_per_s", "peak_host_rss_bytes"} <= set(steps[-1].metrics)
    assert not any(
        k.startswith("peak_gpu") for e in steps for k in e.metrics
    )  # CPU: no GPU figures
    assert summary.memory.peak_gpu_allocated_bytes is None
    assert summary.memory.peak_host_rss_bytes and "not GPU" in summary.memory.note
    step_peak = summary.memory.peak_step_tensor_bytes
    model_bytes = 3_720 * 4  # parameters; + grads + 2 Adam moments + activations at least
    assert step_peak is not None and step_peak > 4 * model_bytes


def test_final_model_reproduces_reported_accuracy(tmp_path: Path) -> None:
    run = Run.local(tmp_path, job_id="acc")
    summary = fit(SMOKE, run)
    saved = checkpoint.from_bytes(run.store.get_bytes(run.keys.final_model))
    model = build_model(saved["model_name"])
    model.load_state_dict(saved["state_dict"])
    from workers.trainer.data import load_dataset

    data = load_dataset("fake")
    with torch.no_grad():
        acc = (model.eval()(data.test_x / 255).argmax(1) == data.test_y).float().mean().item()
    assert acc == pytest.approx(summary.metrics["test_accuracy"], abs=1e-9)


def test_cancel_flag_stops_within_a_step(tmp_path: Path) -> None:
    class CancelAt(LocalRun):
        def should_stop(self) -> bool:
            return any(e.kind == "step" and e.step >= 5 for e in self.events + self._pending)

    run = CancelAt("cancel", LocalArtifactStore(tmp_path))
    with pytest.raises(JobCancelled) as info:
        fit(SMOKE.model_copy(update={"log_every": 1}), run)
    assert info.value.step == 5


def test_resume_continues_the_step_count_with_identical_weights(tmp_path: Path) -> None:
    spec = SMOKE.model_copy(update={"checkpoint_every": 5})
    straight = Run.local(tmp_path / "a", job_id="j")
    fit(spec, straight)

    # Interrupt at step 7 (checkpoint at 5), then run again on the same store: resumes at 5.
    interrupted = Run.local(tmp_path / "b", job_id="j")
    interrupted.stop_requested = _SetAfter(7, interrupted)
    with pytest.raises(JobCancelled):
        fit(spec, interrupted)
    resumed = LocalRun("j", interrupted.store)
    summary = fit(spec, resumed)
    assert summary.steps == 16
    first_step = min(e.step for e in resumed.events if e.kind == "step")
    assert first_step == 6  # log_every 2: step 6 is the first logged step after 5

    def weights(run: Run) -> dict[str, torch.Tensor]:
        return checkpoint.from_bytes(run.store.get_bytes(run.keys.final_model))["state_dict"]

    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


class _SetAfter(threading.Event):
    """A stop flag that turns on once the run has logged `step`."""

    def __init__(self, step: int, run: LocalRun) -> None:
        super().__init__()
        self.step, self.run = step, run

    def is_set(self) -> bool:
        return any(
            e.step >= self.step for e in self.run.events + self.run._pending if e.kind == "step"
        )
