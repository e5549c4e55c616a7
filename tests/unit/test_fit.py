"""fit() is a plain function: run it against a folder store, no services."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.utils import make_grid, save_image

from shared.schemas import ClassifierSpec, GanSpec, JobSummary
from shared.storage import LocalArtifactStore
from workers.trainer import checkpoint
from workers.trainer.data import load_dataset
from workers.trainer.fit import fit
from workers.trainer.models import build_model
from workers.trainer.monitor import Diverged
from workers.trainer.recipes import ClassifierRecipe, GanRecipe
from workers.trainer.run import JobStopped, LocalRun, Run, StopReason

SMOKE = ClassifierSpec(
    dataset="fake",
    epochs=2,
    batch_size=64,
    checkpoint_every=3,
    sample_every=4,
    log_every=2,
    device="cpu",
)  # 8 steps per epoch


class StopAt(LocalRun):
    """A run whose stop reason turns on once `step` is reached (as another thread would)."""

    def __init__(self, store: LocalArtifactStore, step: int, reason: StopReason) -> None:
        super().__init__("j", store)
        self.at, self.reason = step, reason

    def should_stop(self, step: int) -> bool:
        if step >= self.at:
            self.stop_reason = self.reason
        return super().should_stop(step)

    def settle(self) -> None:
        """Wait for the writes already handed to the background (a lost lease does not wait
        for them), so what the next run finds does not depend on thread timing."""
        self.uploader.thread.join(timeout=60)
        assert not self.uploader.thread.is_alive()


def test_fit_writes_every_artifact_and_event(tmp_path: Path) -> None:
    run = Run.local(tmp_path, job_id="smoke")
    summary = fit(SMOKE, run)

    assert summary.steps == 16 and summary.epochs == 2
    keys = {o.key for o in run.store.list_prefix("jobs/smoke/")}
    for step in (3, 6, 9, 12, 15, 16):
        assert run.objects.checkpoint(step) in keys
    for step in (4, 8, 12, 16):
        assert run.objects.sample(step) in keys
    assert {
        run.objects.manifest,
        run.objects.final_model,
        run.objects.summary,
        run.objects.memory,
    } <= keys
    assert JobSummary.model_validate_json(run.store.get_bytes(run.objects.summary)) == summary

    kinds = [e.kind for e in run.events]
    assert kinds.count("epoch") == 2
    steps = [e for e in run.events if e.kind == "step"]
    assert [e.step for e in steps] == list(range(2, 17, 2))
    assert {"loss", "images_per_s", "peak_host_rss_bytes"} <= set(steps[-1].metrics)
    assert not any(k.startswith("peak_gpu") for e in steps for k in e.metrics)  # CPU: no GPU
    assert summary.memory.peak_gpu_allocated_bytes is None
    assert summary.memory.peak_host_rss_bytes and "not GPU" in summary.memory.note
    step_peak = summary.memory.peak_step_tensor_bytes
    model_bytes = 3_720 * 4  # parameters; + grads + 2 Adam moments + activations at least
    assert step_peak is not None and step_peak > 4 * model_bytes


def test_final_model_reproduces_reported_accuracy(tmp_path: Path) -> None:
    run = Run.local(tmp_path, job_id="acc")
    summary = fit(SMOKE, run)
    saved = checkpoint.from_bytes(run.store.get_bytes(run.objects.final_model))
    model = build_model(saved["model_name"])
    model.load_state_dict(saved["state_dict"])
    data = load_dataset("fake")
    with torch.no_grad():
        acc = (model.eval()(data.test_x / 255).argmax(1) == data.test_y).float().mean().item()
    assert acc == pytest.approx(summary.metrics["test_accuracy"], abs=1e-9)


def test_cancel_stops_at_the_step_without_a_checkpoint(tmp_path: Path) -> None:
    run = StopAt(LocalArtifactStore(tmp_path), 5, "cancel")
    with pytest.raises(JobStopped) as info:
        fit(SMOKE.model_copy(update={"log_every": 1}), run)
    assert info.value.step == 5 and info.value.reason == "cancel"
    assert not run.store.exists(run.objects.checkpoint(5))


def test_shutdown_checkpoints_the_step_it_stops_at(tmp_path: Path) -> None:
    run = StopAt(LocalArtifactStore(tmp_path), 5, "shutdown")
    with pytest.raises(JobStopped):
        fit(SMOKE, run)
    manifest = checkpoint.read_manifest(run.store, run.objects)
    assert manifest is not None and manifest.step == 5


def test_a_shutdown_after_a_non_finite_loss_saves_nothing_and_fails(tmp_path: Path) -> None:
    """A NaN at step 4, then SIGTERM's hand-back at step 5, between two logs: the hand-back
    must not save the non-finite model and call it the newest checkpoint."""

    class NanThenShutdown(StopAt):
        def after_step(self, step: int, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v * float("nan") for k, v in losses.items()} if step == 4 else losses

    spec = SMOKE.model_copy(update={"log_every": 100, "checkpoint_every": 2})
    run = NanThenShutdown(LocalArtifactStore(tmp_path), 5, "shutdown")
    with pytest.raises(Diverged, match="diverged at step 4: non-finite loss; the last good "):
        fit(spec, run)
    manifest = checkpoint.read_manifest(run.store, run.objects)
    assert manifest is not None and manifest.step == 2


def test_resume_continues_the_step_count_with_identical_weights(tmp_path: Path) -> None:
    spec = SMOKE.model_copy(update={"checkpoint_every": 5})
    straight = Run.local(tmp_path / "a", job_id="j")
    fit(spec, straight)

    # Crash at step 7 (the last checkpoint is step 5), then run again on the same store.
    crashed = StopAt(LocalArtifactStore(tmp_path / "b"), 7, "lease_lost")
    with pytest.raises(JobStopped):
        fit(spec, crashed)
    crashed.settle()
    resumed = LocalRun("j", crashed.store)
    summary = fit(spec, resumed)
    assert summary.steps == 16
    start = next(e for e in resumed.events if e.kind == "log")
    assert start.info["resumed_from"] == 5
    assert min(e.step for e in resumed.events if e.kind == "step") == 6

    def weights(run: Run) -> dict[str, torch.Tensor]:
        return checkpoint.from_bytes(run.store.get_bytes(run.objects.final_model))["state_dict"]

    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_micro_batches_give_the_full_batch_gradient() -> None:
    """book_mlp has no BatchNorm, so accumulation over 4 micro-batches must equal one batch."""
    spec = ClassifierSpec(model="book_mlp", dataset="fake", device="cpu")
    data = load_dataset("fake")
    x, y = data.train_x[:64], data.train_y[:64]
    torch.manual_seed(0)
    whole = ClassifierRecipe(spec, data, torch.device("cpu"))
    torch.manual_seed(0)
    split = ClassifierRecipe(spec, data, torch.device("cpu"), micro_batch=16)
    a, b = whole.train_step(x, y)["loss"], split.train_step(x, y)["loss"]
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    for p, q in zip(whole.model.parameters(), split.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_gan_micro_batches_train() -> None:
    spec = GanSpec(dataset="fake", device="cpu", batch_size=16)
    data = load_dataset("fake")
    recipe = GanRecipe(spec, data, torch.device("cpu"), micro_batch=4)
    metrics = recipe.train_step(data.train_x[:16], data.train_y[:16])
    assert set(metrics) == {"d_loss", "g_loss", "d_real", "d_fake"}
    assert all(torch.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("log_every", [1, 5, 10**6])
def test_images_per_s_counts_every_training_step_and_no_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_every: int
) -> None:
    """On a clock where each training step takes 1 s and each evaluation 100 s, the rate is
    exactly one batch per second, however the logging falls across epoch ends."""
    import workers.trainer.fit as loop

    clock = [0.0]
    real_make_recipe = loop.make_recipe

    def timed_recipe(*args: object, **kwargs: object) -> object:
        recipe = real_make_recipe(*args, **kwargs)  # type: ignore[arg-type]
        step, evaluate = recipe.train_step, recipe.evaluate

        def train_step(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
            clock[0] += 1.0
            return step(x, y)

        def slow_evaluate() -> dict[str, float]:
            clock[0] += 100.0
            return evaluate()

        recipe.train_step, recipe.evaluate = train_step, slow_evaluate  # type: ignore[method-assign]
        return recipe

    monkeypatch.setattr(loop, "make_recipe", timed_recipe)
    monkeypatch.setattr(loop, "time", type("FakeTime", (), {"perf_counter": lambda: clock[0]}))
    spec = SMOKE.model_copy(update={"log_every": log_every, "epochs": 3})  # 24 steps
    summary = fit(spec, Run.local(tmp_path))
    assert summary.steps == 24
    assert summary.wall_s == pytest.approx(23.0)  # the first step is profiled, not counted
    assert summary.images_per_s == pytest.approx(64.0)


def test_sample_grids_are_the_pngs_save_image_would_write(tmp_path: Path) -> None:
    """Made 8-bit on the training thread, encoded behind: the same pixels as save_image."""
    grid = make_grid(torch.rand(10, 3, 28, 28, generator=torch.Generator().manual_seed(0)))
    run = Run.local(tmp_path, job_id="png")
    with run:
        run.sample(7, 0, grid)
        run.drain()
    written = Image.open(io.BytesIO(run.store.get_bytes(run.objects.sample(7))))
    expected = io.BytesIO()
    save_image(grid, expected, format="png")
    assert written.mode == "RGB" and written.size == (grid.shape[2], grid.shape[1])
    assert np.array_equal(np.asarray(written), np.asarray(Image.open(expected)))
    assert [e.info["key"] for e in run.events if e.kind == "sample"] == [run.objects.sample(7)]
