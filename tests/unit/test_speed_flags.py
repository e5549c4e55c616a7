"""The opt-in speed flags (amp, channels_last, compile), run for real on the CPU: bf16 autocast
and channels_last behave there as on CUDA (where they pay off); torch.compile uses Inductor's
C++ backend, so its test trains the smallest model for a few steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from shared.schemas import ClassifierSpec, GanSpec, JobSpec, JobSpecAdapter, JobSummary
from shared.storage import LocalArtifactStore
from tests.unit.test_fit import StopAt
from workers.trainer import checkpoint
from workers.trainer.data import load_dataset
from workers.trainer.fit import fit
from workers.trainer.models import build_model
from workers.trainer.probe import timeline
from workers.trainer.recipes import ClassifierRecipe, GanRecipe, make_recipe
from workers.trainer.run import JobStopped, LocalRun, Run
from workers.trainer.speed import training_forward

CPU = torch.device("cpu")
SHORT = ClassifierSpec(dataset="mnist-5k", device="cpu", max_steps=40, log_every=5)


def _record_dtypes(model: nn.Module, kinds: tuple[type[nn.Module], ...]) -> list[torch.dtype]:
    """Output dtypes of every `kinds` layer of `model`, call by call."""
    seen: list[torch.dtype] = []
    for layer in model.modules():
        if isinstance(layer, kinds):
            layer.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


def _losses(run: LocalRun, name: str = "loss") -> list[float]:
    return [e.metrics[name] for e in run.events if e.kind == "step"]


def _fit(spec: JobSpec, tmp_path: Path, job_id: str = "j") -> tuple[LocalRun, JobSummary]:
    run = Run.local(tmp_path, job_id=job_id)
    return run, fit(spec, run)


def test_flags_are_named_in_the_first_log_event_and_the_summary(tmp_path: Path) -> None:
    run, summary = _fit(SHORT.model_copy(update={"max_steps": 2}), tmp_path)
    assert summary.speed == [] and run.events[0].info["speed"] == []
    spec = SHORT.model_copy(update={"max_steps": 2, "amp": True, "channels_last": True})
    run, summary = _fit(spec, tmp_path, "k")
    start = run.events[0]
    assert start.kind == "log" and start.info["speed"] == ["amp", "channels_last"]
    assert summary.speed == ["amp", "channels_last"]


# --- amp: bf16 autocast around the training forward passes, float32 losses.


def test_amp_runs_the_classifier_forward_in_bf16_with_float32_losses() -> None:
    spec = ClassifierSpec(dataset="mnist-5k", device="cpu", amp=True)
    data = load_dataset("mnist-5k")
    recipe = ClassifierRecipe(spec, data, CPU)
    layers = _record_dtypes(recipe.model, (nn.Conv2d, nn.Linear))
    outputs = _record_dtypes(recipe.model, (nn.Sigmoid,))
    loss = recipe.train_step(data.train_x[:64], data.train_y[:64])["loss"]
    assert layers and set(layers) == {torch.bfloat16}  # convs and linears ran in bf16
    assert set(outputs) == {torch.float32}  # Sigmoid kept in float32 for BCELoss
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in recipe.model.parameters())  # master weights
    assert all(
        p.grad is not None and p.grad.dtype == torch.float32 for p in recipe.model.parameters()
    )

    layers.clear()
    recipe.evaluate()  # held-out metrics are measured in float32, as without the flag
    assert layers and set(layers) == {torch.float32}


def test_amp_gan_step_runs_d_and_g_in_bf16() -> None:
    spec = GanSpec(dataset="mnist-5k", device="cpu", batch_size=16, amp=True)
    data = load_dataset("mnist-5k")
    recipe = GanRecipe(spec, data, CPU)
    d = _record_dtypes(recipe.D, (nn.Conv2d,))
    g = _record_dtypes(recipe.G, (nn.ConvTranspose2d,))
    metrics = recipe.train_step(data.train_x[:16], data.train_y[:16])
    assert set(d) == {torch.bfloat16} and set(g) == {torch.bfloat16}
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in metrics.values())


def test_amp_training_lowers_the_loss(tmp_path: Path) -> None:
    run, summary = _fit(SHORT.model_copy(update={"amp": True}), tmp_path)
    losses = _losses(run)
    assert len(losses) == 8 and all(0 < v < 10 for v in losses)
    assert losses[-1] < 0.7 * losses[0], losses
    assert summary.metrics["test_accuracy"] > 0.5  # 10 classes: chance is 0.1


def test_amp_on_a_gpu_without_bf16_is_refused_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pre-Ampere GPU (here: as torch would report a T4) fails the job at the start."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    amp = SHORT.model_copy(update={"amp": True})
    with pytest.raises(ValueError, match=r"amp trains in bf16.*Tesla T4.*without amp"):
        training_forward(amp, build_model("book_cnn"), torch.device("cuda"))
    training_forward(SHORT, build_model("book_cnn"), torch.device("cuda"))  # no amp: fine
    training_forward(amp, build_model("book_cnn"), CPU)  # CPU autocast has bf16


# --- channels_last: conv weights and image batches in NHWC memory order.


def test_channels_last_converts_conv_weights_and_batches() -> None:
    spec = ClassifierSpec(dataset="mnist-5k", device="cpu", channels_last=True)
    data = load_dataset("mnist-5k")
    recipe = ClassifierRecipe(spec, data, CPU)
    # The second Conv2d(10, 10, 3) has 10 input channels, so the two formats differ.
    conv = [m for m in recipe.model.modules() if isinstance(m, nn.Conv2d)][1]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    inputs: list[Tensor] = []
    conv.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
    recipe.train_step(data.train_x[:64], data.train_y[:64])
    assert inputs[0].is_contiguous(memory_format=torch.channels_last)
    assert conv.weight.grad is not None
    assert conv.weight.grad.is_contiguous(memory_format=torch.channels_last)
    state = recipe.optimizer.state[conv.weight]
    assert state["exp_avg"].is_contiguous(memory_format=torch.channels_last)


def test_channels_last_gan_and_mlp() -> None:
    data = load_dataset("mnist-5k")
    gan = GanRecipe(GanSpec(dataset="mnist-5k", device="cpu", channels_last=True), data, CPU)
    layers = (*gan.D.modules(), *gan.G.modules())
    convs = [m for m in layers if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    assert len(convs) == 4 and all(
        m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs
    )
    metrics = gan.train_step(data.train_x[:16], data.train_y[:16])
    assert all(torch.isfinite(v) for v in metrics.values())
    # A fully-connected model has no 4-D weights: the flag changes nothing and harms nothing.
    mlp = ClassifierRecipe(
        ClassifierSpec(model="book_mlp", dataset="mnist-5k", device="cpu", channels_last=True),
        data,
        CPU,
    )
    assert all(p.is_contiguous() for p in mlp.model.parameters())
    assert torch.isfinite(mlp.train_step(data.train_x[:64], data.train_y[:64])["loss"])


def test_channels_last_training_lowers_the_loss_and_checkpoints_load_anywhere(
    tmp_path: Path,
) -> None:
    run, summary = _fit(SHORT.model_copy(update={"channels_last": True}), tmp_path)
    losses = _losses(run)
    assert losses[-1] < 0.7 * losses[0], losses
    # The final weights load into a plain model and give the accuracy the run reported.
    saved = checkpoint.from_bytes(run.store.get_bytes(run.objects.final_model))
    model = build_model("book_cnn")
    model.load_state_dict(saved["state_dict"])
    data = load_dataset("mnist-5k")
    with torch.no_grad():
        scores = model.eval()(data.test_x / 255)
    accuracy = (scores.argmax(1) == data.test_y).float().mean().item()
    assert accuracy == pytest.approx(summary.metrics["test_accuracy"], abs=2e-3)


# --- compile: torch.compile for training, checkpoints unchanged.


def test_compile_keeps_checkpoints_interchangeable_with_eager_runs(tmp_path: Path) -> None:
    """An eager run stops at step 7 (last checkpoint: step 5); a compiled run resumes it. The
    compiled run's checkpoints have the eager keys (no `_orig_mod.`) and load into eager."""
    torch._dynamo.reset()
    eager = SHORT.model_copy(update={"model": "book_mlp", "max_steps": 10, "checkpoint_every": 5})
    crashed = StopAt(LocalArtifactStore(tmp_path), 7, "lease_lost")
    with pytest.raises(JobStopped):
        fit(eager, crashed)
    crashed.settle()

    compiled = eager.model_copy(update={"compile": True})
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    resumed = LocalRun("j", crashed.store)
    summary = fit(compiled, resumed)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # it did compile
    assert summary.steps == 10 and summary.speed == ["compile"]
    assert resumed.events[0].info["resumed_from"] == 5
    assert all(0 < v < 10 for v in _losses(resumed))

    expected = set(build_model("book_mlp").state_dict())
    state = checkpoint.from_bytes(crashed.store.get_bytes(resumed.objects.checkpoint(10)))
    assert set(state["model"]) == expected
    final = checkpoint.from_bytes(crashed.store.get_bytes(resumed.objects.final_model))
    assert set(final["state_dict"]) == expected
    plain = make_recipe(eager, load_dataset("mnist-5k"), CPU)
    plain.load_state_dict(state)  # strict: every key matches


def test_the_memory_probe_measures_the_plain_step() -> None:
    """plan_key does not tell the flags apart, so the probe ignores them (and never compiles)."""
    spec = JobSpecAdapter.validate_python({"task": "gan", "device": "cpu"})
    fast = spec.model_copy(update={"amp": True, "channels_last": True, "compile": True})
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert timeline(fast, (1, 28, 28), 10, 2) == timeline(spec, (1, 28, 28), 10, 2)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


def test_openapi_documents_the_flags() -> None:
    from services.api.main import create_app

    schemas = create_app().openapi()["components"]["schemas"]
    for spec in ("ClassifierSpec", "GanSpec", "CganSpec"):
        fields = schemas[spec]["properties"]
        for flag in ("amp", "channels_last", "compile"):
            assert fields[flag]["default"] is False
            assert "Opt-in" in fields[flag]["description"]
