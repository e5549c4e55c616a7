"""The fused pack step (workers/trainer/fused.py): stacked weights that stay each trial's own,
one Adam for K trials with each trial's own hyperparameters, and the executor choice."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from shared.config import get_settings
from shared.schemas import ClassifierSpec, GanSpec, JobSpec, JobSummary
from workers.trainer import checkpoint
from workers.trainer.data import Batches, load_dataset
from workers.trainer.fit import fit
from workers.trainer.fused import FusedPack, Stack, StackedAdam
from workers.trainer.models import build_model
from workers.trainer.pack import _Stepper, fit_pack
from workers.trainer.recipes import ClassifierRecipe, GanTricks, Recipe, make_recipe
from workers.trainer.run import Run

CPU = torch.device("cpu")
# (lr, betas, eps) per trial: every hyperparameter differs somewhere.
HYPER = [(1e-3, (0.9, 0.999), 1e-8), (3e-2, (0.5, 0.999), 1e-8), (2e-4, (0.8, 0.99), 1e-6)]


@pytest.fixture(autouse=True)
def _no_quality(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TRAINYARD_QUALITY", "false")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _models(seed: int) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [build_model("book_cnn") for _ in HYPER]


def _adams(models: list[nn.Module]) -> list[torch.optim.Optimizer]:
    return [
        torch.optim.Adam(m.parameters(), lr=lr, betas=betas, eps=eps)
        for m, (lr, betas, eps) in zip(models, HYPER, strict=True)
    ]


def test_stacked_adam_steps_each_trial_as_its_own_torch_adam_bitwise() -> None:
    """30 steps of random gradients: every weight and every optimiser state tensor of every
    trial equals, bit for bit, what its own torch.optim.Adam makes of the same gradients."""
    alone, packed = _models(0), _models(0)
    solo_adams, packed_adams = _adams(alone), _adams(packed)
    stack = Stack(packed)
    adam = StackedAdam(packed_adams, stack)
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):
        stack.zero_grad()
        for name, stacked in stack.params.items():
            stacked.grad = torch.randn(stacked.shape, generator=gen)
            for i, model in enumerate(alone):
                model.get_parameter(name).grad = stacked.grad[i].clone()
        adam.step()
        for opt in solo_adams:
            opt.step()
    for i in range(len(HYPER)):
        mine, theirs = packed[i].state_dict(), alone[i].state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
        ours, solo = packed_adams[i].state_dict()["state"], solo_adams[i].state_dict()["state"]
        for k, state in solo.items():
            assert all(torch.equal(ours[k][key], state[key]) for key in state)


def test_a_stacked_trial_is_its_own_module_optimiser_and_checkpoint() -> None:
    """Each trial's module and torch Adam are views of the stack. After fused steps, what the
    trial's own state_dict() holds (its checkpoint) is where it is: a solo recipe loaded from
    it takes the next step bit for bit as the trial's own train_step does on the stack's
    storage (the loop executor, or a step whose batches differ in size); the fused step then
    goes on from there. release() gives every module its own storage back."""
    data = load_dataset("fake")
    specs = [
        ClassifierSpec(dataset="fake", batch_size=32, lr=lr, seed=s)
        for lr, s in [(1e-3, 1), (3e-2, 2)]
    ]

    def recipes() -> list[ClassifierRecipe]:
        made = []
        for spec in specs:
            torch.manual_seed(spec.seed)
            recipe = make_recipe(spec, data, CPU)
            assert isinstance(recipe, ClassifierRecipe)
            made.append(recipe)
        return made

    packed, twins = recipes(), recipes()
    batches = [list(Batches(data.train_x, data.train_y, 32, s.seed).epoch(0)) for s in specs]

    def batch(step: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return [b[step][0] for b in batches], [b[step][1] for b in batches]

    pack = FusedPack(packed)
    for step in range(4):
        pack.step(*batch(step))
    for twin, trial in zip(twins, packed, strict=True):
        twin.load_state_dict(checkpoint.snapshot(trial.state_dict()))
    xs, ys = batch(4)
    for twin, trial, x, y in zip(twins, packed, xs, ys, strict=True):
        assert torch.equal(trial.train_step(x, y)["loss"], twin.train_step(x, y)["loss"])
        mine, theirs = trial.state_dict(), twin.state_dict()
        assert all(torch.equal(mine["model"][k], t) for k, t in theirs["model"].items())
        for k, state in theirs["optimizer"]["state"].items():
            assert all(torch.equal(mine["optimizer"]["state"][k][n], state[n]) for n in state)
    pack.step(*batch(5))
    name, stacked = next(iter(pack.stacks[0].params.items()))
    for i, trial in enumerate(packed):
        assert torch.equal(trial.model.get_parameter(name), stacked[i])
        assert all(float(s["step"]) == 6 for s in trial.optimizer.state_dict()["state"].values())
    pack.release()
    assert all(
        t.untyped_storage().nbytes() == t.nelement() * t.element_size()
        for r in packed
        for t in (*r.model.parameters(), *r.model.buffers())
    )


def test_optimisers_the_fused_step_does_not_train_are_refused() -> None:
    models = _models(0)[:2]
    decayed = [torch.optim.Adam(m.parameters(), weight_decay=0.1) for m in models]
    with pytest.raises(ValueError, match="plain Adam"):
        StackedAdam(decayed, Stack(models))
    with pytest.raises(ValueError, match="plain Adam"):
        StackedAdam([torch.optim.SGD(m.parameters(), lr=0.1) for m in models], Stack(models))


def test_a_packed_trials_files_are_as_small_as_a_solo_runs(tmp_path: Path) -> None:
    """A trial's weights are views of its pack's stacked tensors: saved as they are, each
    trial's final model and checkpoint would hold every trial's weights."""
    base = ClassifierSpec(dataset="fake", batch_size=32, epochs=1, checkpoint_every=8)
    specs = [base.model_copy(update={"lr": lr, "seed": s}) for s, lr in enumerate([1e-3] * 4)]
    packed = [Run.local(tmp_path, job_id=f"t{i}") for i in range(4)]
    assert all(isinstance(o, JobSummary) for o in fit_pack(specs, packed, executor="fused"))
    alone = Run.local(tmp_path, job_id="solo")
    fit(specs[0], alone)
    for key in ("final_model", "best_model"):
        solo_size = len(alone.store.get_bytes(getattr(alone.objects, key)))
        for run in packed:
            assert len(run.store.get_bytes(getattr(run.objects, key))) <= solo_size + 256
    solo_size = len(alone.store.get_bytes(alone.objects.checkpoint(8)))
    assert len(packed[2].store.get_bytes(packed[2].objects.checkpoint(8))) <= solo_size + 256


def test_auto_times_both_executors_then_keeps_the_faster() -> None:
    """Measured per member set: a warm-up and TIMED steps of each, then the faster."""
    for faster, slower in (("fused", "loop"), ("loop", "fused")):
        stepper = _Stepper("auto", CPU)
        stepper.times = {"fused": [], "loop": []}
        for _ in range(stepper.TIMED + 1):
            assert stepper.choice is None
            stepper._timed(faster, time.perf_counter() - 0.01)
            stepper._timed(slower, time.perf_counter() - 0.05)
        assert stepper.choice == faster


class _Member:
    """What _Stepper reads of a pack's trial: its recipe."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe


def _members(base: JobSpec, k: int = 3) -> tuple[list[Any], list[tuple[Tensor, Tensor]]]:
    data = load_dataset(base.dataset)
    members, batches = [], []
    for seed in range(k):
        spec = base.model_copy(update={"seed": seed})
        torch.manual_seed(seed)
        recipe = make_recipe(spec, data, CPU)
        members.append(_Member(recipe))
        batches.append(next(Batches(data.train_x, recipe.train_labels, 8, seed).epoch(0)))
    return members, batches


@pytest.mark.parametrize(
    "base", [ClassifierSpec(dataset="fake", batch_size=8), GanSpec(dataset="fake", batch_size=8)]
)
def test_a_trial_gone_non_finite_fails_alone_in_a_fused_pack(base: JobSpec) -> None:
    """The fused loss covers every trial and BCE refuses a NaN: the step is taken again by
    each trial's own train_step, so only the trial at fault fails; the rest loop on."""
    members, batches = _members(base)
    recipe = members[1].recipe
    module = recipe.model if isinstance(recipe, ClassifierRecipe) else recipe.D
    with torch.no_grad():
        next(module.parameters()).fill_(float("nan"))
    stepper = _Stepper("fused", CPU)
    stepper.prepare(members, batches)
    assert stepper.fused is not None
    outcomes = stepper.step(members, batches)
    assert isinstance(outcomes[1], BaseException)
    assert isinstance(outcomes[0], dict) and isinstance(outcomes[2], dict)
    assert all(torch.isfinite(v).all() for o in (outcomes[0], outcomes[2]) for v in o.values())
    assert stepper.fused is None  # the members loop until they change
    stepper.prepare(members, batches)
    assert stepper.fused is None
    stepper.release()


def test_spectral_norm_models_step_by_the_loop() -> None:
    """Spectral norm's power iteration writes with out= ops that vmap cannot batch."""
    data = load_dataset("fake")
    recipes = []
    for seed in range(2):
        torch.manual_seed(seed)
        spec = GanSpec(dataset="fake", batch_size=8, seed=seed)
        recipes.append(make_recipe(spec, data, CPU, tricks=GanTricks(spectral_norm=True)))
    with pytest.raises(ValueError, match="spectral norm"):
        FusedPack(recipes)
    members: list[Any] = [_Member(r) for r in recipes]
    batches = [next(Batches(data.train_x, r.train_labels, 8, 0).epoch(0)) for r in recipes]
    stepper = _Stepper("fused", CPU)
    stepper.prepare(members, batches)
    assert stepper.fused is None
    assert all(isinstance(o, dict) for o in stepper.step(members, batches))


def test_auto_frees_the_executor_it_did_not_keep() -> None:
    """Whichever auto keeps, the other's gradients (and, when the loop wins, the stacks)
    are gone: one set of gradients per trial, as alone."""
    members, batches = _members(ClassifierSpec(dataset="fake", batch_size=8))
    stepper = _Stepper("auto", CPU)
    for _ in range(2 * (stepper.TIMED + 1)):
        stepper.prepare(members, batches)
        stepper.step(members, batches)
    assert stepper.choice in ("fused", "loop")
    if stepper.choice == "loop":
        assert stepper.fused is None
        stepper.prepare(members, batches)
        assert stepper.fused is None  # not built again for these members
    else:
        assert stepper.fused is not None
        assert all(p.grad is None for m in members for p in m.recipe.model.parameters())
    stepper.release()
