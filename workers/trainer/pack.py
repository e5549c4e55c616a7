"""fit_pack(): K trials of one pack key (shared/packing.py) trained in one process, one shared
step loop, each trial writing exactly what fit() would write for it alone (docs/packing.md).

Each trial is built as fit() builds a job: torch.manual_seed(spec.seed), then its recipe, so
its initial weights are the solo ones; it has its own data order (Batches, its own seed), its
own step generator (latents, labels, augmentation: GanRecipe.rng), its own optimisers, Monitor
and Run. A pack step runs one of:

- "fused" (workers/trainer/fused.py): the K trials' weights live in stacked tensors (each
  trial's modules hold views), one torch.func.vmap forward and one backward over them, and
  one Adam step with each trial's own hyperparameters. It wins where per-operation overhead
  dominates: a GPU, small batches on a CPU.
- "loop": each trial's own recipe.train_step in turn: exactly solo. It wins at large
  batches on a few CPU cores, where grouped kernels of a few channels are slow.
- "auto": times both on the first steps of each set of members and keeps the faster.

Trials step from their own steps: after a crash each resumes from its own checkpoint, and a
pack step takes every trial one step on from where it is (trials at different places in an
epoch may have batches of different sizes: such a step runs each trial's own). A trial
leaves the pack when it is done (its own epochs / max_steps), stopped (run.should_stop: its
outcome is the JobStopped), diverged or failed (the exception); the others go on."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor

from shared.packing import pack_key
from shared.schemas import JobSpec, JobSummary
from workers.trainer.clusters import Clusters
from workers.trainer.data import Batches, ImageData, load_dataset
from workers.trainer.fit import _announce, _resume, _state, finish
from workers.trainer.fused import FusedPack, Losses
from workers.trainer.memory import MemoryMeter, pick_device
from workers.trainer.monitor import Monitor
from workers.trainer.recipes import Recipe, make_recipe
from workers.trainer.run import Run

Executor = Literal["auto", "fused", "loop"]

log = logging.getLogger(__name__)


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
        stepper = _Stepper(executor, device)
        try:
            while active:
                members = list(active.values())
                batches = [trial.next_batch() for trial in members]
                stepper.prepare(members, batches)  # outside the first step's measurement
                with meter.first_step(partial(_live_state, members)) as measured:
                    began = time.perf_counter()
                    losses = stepper.step(members, batches)
                    took = time.perf_counter() - began
                for trial, (x, _), loss in zip(members, batches, losses, strict=True):
                    trial.after_step(loss, len(x), took, measured)
                active = {i: t for i, t in active.items() if t.outcome is None}
                for i, trial in trials.items():
                    if trial.outcome is not None and i not in outcomes:
                        leave(i, trial.outcome)
        finally:
            stepper.release()
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


class _Stepper:
    """Steps the members of a pack. Fused: one FusedPack step over every member, built anew
    when the members change (and when they cannot all be fused, or this step's batches
    differ in size, each member's own train_step). Loop: each member's own train_step.
    Auto: the first steps of each member set time both (the first of each a warm-up), then
    the faster is kept until the members change; the other's gradients are freed.

    A fused step that raises (a trial gone non-finite fails the whole batched loss; out of
    memory) is taken again by each member's own train_step, so only a trial at fault fails,
    and the members step by the loop until they change. The others' retaken step consumed
    its random draws and BatchNorm statistics twice: it differs from solo beyond rounding."""

    TIMED = 2  # timed steps of each executor, after its warm-up

    def __init__(self, executor: Executor, device: torch.device) -> None:
        self.executor, self.device = executor, device
        self.members: list[_Trial] = []
        self.fused: FusedPack | None = None
        self.times: dict[str, list[float]] = {}
        self.choice: str | None = None  # "loop" too once the members cannot be fused

    def prepare(self, members: list[_Trial], batches: Sequence[tuple[Tensor, Tensor]]) -> None:
        """Stack the members' models if they changed (the departed ones get their own
        storage back first)."""
        if self.executor == "loop":
            return
        if members != self.members:
            self.release()
            self.members = members
            self.times = {"fused": [], "loop": []}
            self.choice = None if self.executor == "auto" else self.executor
        uniform = len({len(x) for x, _ in batches}) == 1
        if self.fused is None and self.choice != "loop" and len(members) > 1 and uniform:
            try:
                self.fused = FusedPack([t.recipe for t in members])
            except Exception as exc:  # a recipe or optimiser it does not train; no memory
                log.info("pack of %d steps by the loop: %s", len(members), exc)
                self.choice = "loop"

    def step(
        self, members: list[_Trial], batches: Sequence[tuple[Tensor, Tensor]]
    ) -> list[Losses | BaseException]:
        """One optimiser step of each member: its losses, or what it raised."""
        fused = self.fused
        if fused is None or len({len(x) for x, _ in batches}) != 1:
            return self._loop(members, batches)
        way = self.choice or min(self.times, key=lambda w: len(self.times[w]))
        if self.choice is None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # time this step's work alone
        began = time.perf_counter()
        if way == "loop":
            done = self._loop(members, batches)
        else:
            try:
                done = list(fused.step([x for x, _ in batches], [y for _, y in batches]))
            except Exception as exc:
                log.warning(
                    "fused step of %d failed (%r): each trial steps alone", len(members), exc
                )
                self._drop_fused()
                self.choice = "loop"
                return self._loop(members, batches)
        if self.choice is None:
            self._timed(way, began)
        return done

    @staticmethod
    def _loop(
        members: list[_Trial], batches: Sequence[tuple[Tensor, Tensor]]
    ) -> list[Losses | BaseException]:
        return [
            _attempt(t.recipe.train_step, x, y) for t, (x, y) in zip(members, batches, strict=True)
        ]

    def _timed(self, way: str, began: float) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times[way].append(time.perf_counter() - began)
        if all(len(t) > self.TIMED for t in self.times.values()):  # warm-ups dropped
            self.choice = min(self.times, key=lambda w: sum(self.times[w][1:]))
            if self.choice == "loop":
                self._drop_fused()  # its stacked gradients, too
            elif self.fused is not None:
                self.fused.free_own_grads()

    def _drop_fused(self) -> None:
        if self.fused is not None:
            self.fused.release()
        self.fused = None

    def release(self) -> None:
        self._drop_fused()
        self.members = []


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
