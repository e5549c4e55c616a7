"""fit_pack(): K trials of one pack key (shared/packing.py) trained in one process, one shared
step loop, each trial writing exactly what fit() would write for it alone (docs/packing.md).

Each trial is built as fit() builds a job: torch.manual_seed(spec.seed), then its recipe, so
its initial weights are the solo ones; it has its own data order (Batches, its own seed), its
own step generator (latents, labels, augmentation: GanRecipe.rng), its own optimisers, Monitor
and Run. Two executors run a pack step:

- "fused": the K trials' parameters stacked (torch.stack of each trial's leaves, so gradients
  reach each trial's own parameters), one torch.func.vmap of functional_call over them (a
  convolution over stacked weights runs as one grouped convolution), one backward of the sum
  of the trials' own mean losses, then each trial's own Adam step. Fast on a GPU.
- "loop": each trial's own recipe.train_step in turn: exactly solo. Faster on a few CPU cores,
  where a fused step's stacking and grouped kernels cost more than they save.

Trials step from their own steps: after a crash each resumes from its own checkpoint, and a
pack step takes every trial one step on from where it is (trials at different places in an
epoch may have batches of different sizes: each size is one group of the step). A trial
leaves the pack when it is done (its own epochs / max_steps), stopped (run.should_stop: its
outcome is the JobStopped), diverged or failed (the exception); the others go on."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

from shared.packing import pack_key
from shared.schemas import JobSpec, JobSummary
from workers.trainer.clusters import Clusters
from workers.trainer.data import Batches, ImageData, load_dataset
from workers.trainer.fit import _announce, _resume, _state, finish
from workers.trainer.memory import MemoryMeter, pick_device
from workers.trainer.monitor import Monitor
from workers.trainer.recipes import ClassifierRecipe, GanRecipe, Recipe, make_recipe
from workers.trainer.run import Run

Executor = Literal["fused", "loop"]
Losses = dict[str, Tensor]


def fit_pack(
    specs: Sequence[JobSpec],
    runs: Sequence[Run],
    *,
    executor: Executor = "fused",
    on_leave: Callable[[int, JobSummary | BaseException], None] | None = None,
) -> list[JobSummary | BaseException]:
    """Train `specs[i]` into `runs[i]`, all in one step loop; returns each trial's summary, or
    the exception that ended it (JobStopped, Diverged, ...). `on_leave(i, outcome)` is called
    as trial i leaves the pack (its run closed), while the others go on: the worker ends its
    job there and then. Raises ValueError if the specs do not share one pack key."""
    if len(specs) != len(runs) or not specs:
        raise ValueError("fit_pack takes one run per spec, at least one")
    keys = {pack_key(spec) for spec in specs}
    if None in keys or len(keys) != 1:
        raise ValueError("fit_pack trains specs of one pack key (shared/packing.py) only")
    device = pick_device(specs[0].device)
    meter = MemoryMeter(device)
    data = load_dataset(specs[0].dataset, runs[0].store, runs[0].data_dir).to(device)
    outcomes: dict[int, JobSummary | BaseException] = {}

    def leave(i: int, outcome: JobSummary | BaseException) -> None:
        outcomes[i] = outcome
        runs[i].close()  # its writer stops; what it queued is written
        if on_leave is not None:
            on_leave(i, outcome)

    trials: dict[int, _Trial] = {}
    try:
        clusters = None  # self-conditioning's clusters: the same for every trial, made once
        for i, (spec, run) in enumerate(zip(specs, runs, strict=True)):
            try:
                trials[i] = _Trial(spec, run, data, device, meter, clusters)
            except Exception as exc:  # this trial's recipe or monitor: the others go on
                leave(i, exc)
                continue
            clusters = getattr(trials[i].recipe, "clusters", None)
        active = {i: t for i, t in trials.items() if t.start()}
        while active:
            groups: dict[int, list[tuple[_Trial, Tensor, Tensor]]] = {}
            for trial in active.values():
                x, y = trial.next_batch()
                groups.setdefault(len(x), []).append((trial, x, y))
            for group in groups.values():
                live = partial(_live_state, [t for t, _, _ in group])
                with meter.first_step(live) as measured:
                    began = time.perf_counter()
                    losses = _pack_step(executor, group)
                    took = time.perf_counter() - began
                for (trial, x, _), loss in zip(group, losses, strict=True):
                    trial.after_step(loss, len(x), took, measured)
            active = {i: t for i, t in active.items() if t.outcome is None}
            for i, trial in trials.items():
                if trial.outcome is not None and i not in outcomes:
                    leave(i, trial.outcome)
        for i, trial in trials.items():  # those over before they started
            if trial.outcome is not None and i not in outcomes:
                leave(i, trial.outcome)
    except Exception as exc:  # the pack's own loop: every trial still in it
        for i in range(len(specs)):
            if i not in outcomes:
                leave(i, exc)
    finally:
        for run in runs:
            run.close()
    return [outcomes[i] for i in range(len(specs))]


def _live_state(trials: list[_Trial]) -> dict[str, Any]:
    return {str(i): t.recipe.state_dict() for i, t in enumerate(trials)}


def _pack_step(
    executor: Executor, group: list[tuple[_Trial, Tensor, Tensor]]
) -> list[Losses | BaseException]:
    """One optimiser step of each trial in `group` (one batch size): its losses, or what it
    raised (a fused step that raises fails every trial in it)."""
    if executor == "loop" or len(group) == 1:
        return [_attempt(trial.recipe.train_step, x, y) for trial, x, y in group]
    recipes = [trial.recipe for trial, _, _ in group]
    xs, ys = [x for _, x, _ in group], [y for _, _, y in group]
    try:
        if all(isinstance(r, ClassifierRecipe) for r in recipes):
            return list(
                classifier_step([r for r in recipes if isinstance(r, ClassifierRecipe)], xs, ys)
            )
        return list(gan_step([r for r in recipes if isinstance(r, GanRecipe)], xs, ys))
    except Exception as exc:
        return [exc] * len(group)


def _attempt(step: Any, x: Tensor, y: Tensor) -> Losses | BaseException:
    try:
        return step(x, y)
    except Exception as exc:
        return exc


class _Trial:
    """One trial of a pack: what fit() keeps in its locals, and fit()'s per-step bookkeeping."""

    def __init__(
        self,
        spec: JobSpec,
        run: Run,
        data: ImageData,
        device: torch.device,
        meter: MemoryMeter,
        clusters: Clusters | None,
    ) -> None:
        self.spec, self.run, self.meter = spec, run, meter
        torch.manual_seed(spec.seed)  # as fit(): the solo initial weights
        self.recipe: Recipe = make_recipe(spec, data, device, clusters=clusters)
        self.batches = Batches(data.train_x, self.recipe.train_labels, spec.batch_size, spec.seed)
        self.per_epoch = len(self.batches)
        everything = spec.epochs * self.per_epoch
        self.total = min(everything, spec.max_steps or everything)
        self.monitor = Monitor(spec, self.recipe, data, run, device)
        self.step = 0
        self.images, self.train_s = 0, 0.0
        self.metrics: dict[str, float] = {}
        self.outcome: JobSummary | BaseException | None = None
        self._epoch: Iterator[tuple[Tensor, Tensor]] = iter(())

    def start(self) -> bool:
        """Resume from the run's checkpoint; False if the trial is over already."""
        try:
            self.step = _resume(self.run, self.recipe, self.monitor)
            _announce(self.run, self.spec, self.step, self.per_epoch, self.total, None)
            if self.step >= self.total:
                self._finish()
                return False
            self._open_epoch()
        except Exception as exc:
            self._leave(exc)
            return False
        return True

    def _open_epoch(self) -> None:
        epoch, done_in_epoch = divmod(self.step, self.per_epoch)
        self._epoch = self.batches.epoch(epoch, skip=done_in_epoch)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        found = next(self._epoch, None)
        if found is None:  # the epoch is over (evaluated after its last step)
            self._open_epoch()
            found = next(self._epoch)
        return found

    def after_step(
        self,
        losses: Losses | BaseException,
        n: int,
        took: float,
        measured: bool,
    ) -> None:
        """fit()'s loop body after train_step, for this trial; on an error it leaves."""
        try:
            if isinstance(losses, BaseException):
                if isinstance(losses, torch.OutOfMemoryError):
                    self.run.drain()
                raise losses
            self._after(losses, n, took, measured)
        except Exception as exc:
            self._leave(exc)

    def _after(self, losses: Losses, n: int, took: float, measured: bool) -> None:
        spec, run, monitor, recipe, meter = (
            self.spec,
            self.run,
            self.monitor,
            self.recipe,
            self.meter,
        )
        self.step += 1
        step, epoch = self.step, (self.step - 1) // self.per_epoch
        monitor.observe(step, run.after_step(step, losses))
        if not (measured and self.total > 1):  # a measurement, not training throughput
            self.images += n
            self.train_s += took
        if step % spec.log_every == 0 or step == self.total:
            monitor.logged(step, epoch, losses)
            rate = {"images_per_s": self.images / max(self.train_s, 1e-9)}
            run.emit("step", step, epoch, {**losses, **rate, **meter.peak()})
        if step % spec.checkpoint_every == 0:
            monitor.check()
            run.checkpoint(step, epoch, _state(recipe, monitor, step, epoch))
        if step % spec.sample_every == 0:
            monitor.check()
            run.sample(step, epoch, recipe.sample_grid())
            monitor.score(step, epoch)
        self._maybe_stop(step, epoch)
        if step % self.per_epoch == 0 or step == self.total:
            self.metrics = recipe.evaluate()
            run.emit("epoch", step, epoch, self.metrics, flush=True)
            monitor.evaluated(step, epoch, self.metrics)
            run.evaluated(step, epoch, self.metrics)  # a stop set here: seen after next step
        if step == self.total:
            self._finish()

    def _maybe_stop(self, step: int, epoch: int) -> None:
        run = self.run
        if run.should_stop(step):  # cancel, shutdown, lost lease, pruned
            if run.stop_reason == "shutdown":
                self.monitor.check()  # a shutdown checkpoints this step
            raise run.stop(step, epoch, partial(_state, self.recipe, self.monitor, step, epoch))

    def _finish(self) -> None:
        """fit()'s end: the last checkpoint and grid, the final artifacts and the summary."""
        self.outcome = finish(
            self.spec,
            self.run,
            self.recipe,
            self.monitor,
            self.meter,
            self.step,
            self.per_epoch,
            self.train_s,
            self.images,
            self.metrics,
        )

    def _leave(self, exc: BaseException) -> None:
        """Out of the pack with `exc`; its run is closed with the others' at the end."""
        self.outcome = exc
        with contextlib.suppress(Exception):
            self.run.flush()


# --- the fused step: K trials of one architecture, one vmapped forward per pass


class Stacked:
    """K modules of one architecture called as one: parameters stacked per call (torch.stack
    of each module's own leaves: differentiable), buffers stacked once per step, updated in
    place by the vmapped calls (BatchNorm's running statistics), and copied back by
    write_back()."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules, self.base = list(modules), modules[0]
        self.names = [name for name, _ in self.base.named_parameters()]
        owned = [dict(m.named_buffers()) for m in self.modules]
        self.buffers = {n: torch.stack([b[n] for b in owned]) for n in owned[0]}

    def params(self, detach: bool = False) -> dict[str, Tensor]:
        """The current parameters, stacked: (K, *shape) each."""
        owned = [dict(m.named_parameters()) for m in self.modules]
        stacked = {n: torch.stack([p[n] for p in owned]) for n in self.names}
        return {n: t.detach() for n, t in stacked.items()} if detach else stacked

    def __call__(self, params: dict[str, Tensor], *inputs: Tensor | None) -> Tensor:
        """inputs: (K, N, ...) each; None ones (an unconditional model's label) are left out."""
        given = tuple(x for x in inputs if x is not None)

        def one(p: dict[str, Tensor], b: dict[str, Tensor], *xs: Tensor) -> Tensor:
            return functional_call(self.base, (p, b), xs)

        return vmap(one)(params, self.buffers, *given)

    @torch.no_grad()
    def write_back(self) -> None:
        for i, module in enumerate(self.modules):
            for name, buffer in module.named_buffers():
                buffer.copy_(self.buffers[name][i])


def _stack(parts: Sequence[Tensor | None]) -> Tensor | None:
    return None if parts[0] is None else torch.stack([p for p in parts if p is not None])


def _bce(out: Tensor, target: Tensor | float) -> Tensor:
    """(K,) each trial's mean BCE, as its recipe's nn.BCELoss() would give it."""
    target = target.expand_as(out) if isinstance(target, Tensor) else torch.full_like(out, target)
    return F.binary_cross_entropy(out, target, reduction="none").flatten(1).mean(1)


def classifier_step(
    recipes: Sequence[ClassifierRecipe], xs: Sequence[Tensor], ys: Sequence[Tensor]
) -> list[Losses]:
    """ClassifierRecipe.train_step of every trial at once (one batch size, no micro-batches)."""
    for r in recipes:
        r.model.train()
        r.optimizer.zero_grad(set_to_none=True)
    net = Stacked([r.model for r in recipes])
    x = torch.stack([r.prepare(x) for r, x in zip(recipes, xs, strict=True)])
    target = torch.stack(
        [F.one_hot(y, r.outputs).float() for r, y in zip(recipes, ys, strict=True)]
    )
    loss = _bce(net(net.params(), x), target)
    loss.sum().backward()  # each trial's gradient is its own loss's: the sum separates
    net.write_back()
    for r in recipes:
        r.optimizer.step()
    return [{"loss": each} for each in loss.detach().unbind()]


def _augment_each(recipes: Sequence[GanRecipe], images: Tensor) -> Tensor:
    """Each trial's DiffAugment draw (from its own generator) on its own images."""
    if not any(r.tricks.augment for r in recipes):
        return images
    return torch.stack([r._augment(x) for r, x in zip(recipes, images.unbind(), strict=True)])


def gan_step(
    recipes: Sequence[GanRecipe], xs: Sequence[Tensor], ys: Sequence[Tensor]
) -> list[Losses]:
    """GanRecipe's fast train_step of every trial at once (one batch size, no micro-batches):
    D on real and on G(z).detach(), each trial's D update, then G through the updated D, each
    trial's G update and EMA. Each trial's draws come from its own generator, in its solo
    order (latents, labels, then the augmentation of real, fake, and fake again for G)."""
    n = len(xs[0])
    if any(r.book or r.micro < n for r in recipes):
        raise ValueError("the fused GAN step trains fast mode without micro-batches only")
    for r in recipes:
        r.D.train()
        r.G.train()
    zs = [r._seed(n) for r in recipes]
    fake_labels = [r._random_labels(n) for r in recipes]
    z, fake_label = torch.stack(zs), _stack(fake_labels)
    fake_cond = _stack(
        [r._fake_condition(zk, lk) for r, zk, lk in zip(recipes, zs, fake_labels, strict=True)]
    )
    real_cond = _stack([r._real_condition(y) for r, y in zip(recipes, ys, strict=True)])
    d, g = Stacked([r.D for r in recipes]), Stacked([r.G for r in recipes])
    for r in recipes:
        r.opt_d.zero_grad(set_to_none=True)
    fake = g(g.params(), z, fake_label)
    g.write_back()  # G's BatchNorm statistics, before the EMA copies them
    real = _augment_each(
        recipes, torch.stack([r.prepare(x) for r, x in zip(recipes, xs, strict=True)])
    )
    d_params = d.params()
    out_real = d(d_params, real, real_cond)
    out_fake = d(d_params, _augment_each(recipes, fake.detach()), fake_cond)
    smooth = torch.tensor([r.tricks.real_label for r in recipes], device=out_real.device)
    d_loss = _bce(out_real, smooth.view(-1, 1, 1)) + _bce(out_fake, 0.0)
    d_loss.sum().backward()
    for r in recipes:
        r.opt_d.step()
        r.opt_g.zero_grad(set_to_none=True)
    # G through the updated D; D's parameters as constants (solo's gradients into D are
    # thrown away by its next zero_grad), its BatchNorm statistics updated as solo.
    out_g = d(d.params(detach=True), _augment_each(recipes, fake), fake_cond)
    g_loss = _bce(out_g, 1.0)
    g_loss.sum().backward()
    d.write_back()
    for r in recipes:
        r.opt_g.step()
        r._update_ema()
    d_real, d_fake = out_real.detach().flatten(1).mean(1), out_fake.detach().flatten(1).mean(1)
    parts = zip(d_loss.detach(), g_loss.detach(), d_real, d_fake, strict=True)
    return [{"d_loss": dl, "g_loss": gl, "d_real": dr, "d_fake": df} for dl, gl, dr, df in parts]
