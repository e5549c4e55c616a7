"""Sweeps over Optuna (docs/sweeps.md), torch-free: the API drives them, workers report to them.

- `check_space` / `trial_spec`: a sweep's space is over job spec fields; every point it can
  produce must be a valid job spec (checked at the corners of the space with the spec's own
  validation), and a trial's spec is the base with the trial's parameters.
- `SweepDriver.advance(sweep_id)`: tell Optuna the outcome of finished trials (COMPLETE with
  the metric from the job's result, PRUNED, FAIL for failed or cancelled), ask new trials
  while fewer than `parallel` are in flight and `n_trials` are not reached (each queued as an
  ordinary job through the API's submit path), cancel what is left of a cancelled sweep, and
  end the sweep when every trial has ended. Idempotent; a short Redis lock per sweep keeps
  several API processes from advancing one sweep at once.
- `TrialReporter.report(job, step, value)`: the worker's side of pruning: the trial's value
  after an epoch's evaluation goes to Optuna; the answer is a reason to stop, or None."""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import numpy as np
import optuna
from optuna.pruners import BasePruner, MedianPruner, NopPruner
from optuna.samplers import BaseSampler, GridSampler, RandomSampler, TPESampler
from optuna.storages import JournalStorage
from optuna.trial import TrialState
from pydantic import ValidationError

from shared.schemas import (
    ChoiceParam,
    FloatParam,
    IntParam,
    JobSpec,
    JobSpecAdapter,
    Param,
    SweepMetric,
    SweepSpec,
)
from shared.state.records import JobRecord
from shared.state.sweeps import (
    JobState,
    SweepRecord,
    SweepRegistry,
    TrialEntry,
    finished_now,
)
from shared.status import JobStatus

log = logging.getLogger(__name__)

# Optuna's GridSampler stores the whole grid in every trial's system attrs (in the Redis
# journal): each parameter's values and the grid's size are capped (past them: a 422).
GRID_MAX_VALUES = 1_000  # values of one parameter on a grid
GRID_POINTS_PER_TRIAL = 4  # a grid may have this many points per TRAINYARD_SWEEP_MAX_TRIALS
GRID_MAX_POINTS = GRID_POINTS_PER_TRIAL * 256  # the default; the API passes its own
CORNERS_MAX = 4096  # every combination of each parameter's extremes is checked up to this
# Fields a space may not vary: the task picks the spec class; a label is not a hyperparameter.
FIXED_FIELDS = frozenset({"task", "name"})
LOCK_S = 60.0  # how long one advance may hold a sweep's lock (it releases it when done)
PASS_BUDGET_S = 10.0  # the reconciler's pass queues a sweep's trials for at most this long

# --- the space


def default_metric(task: str, num_classes: int) -> SweepMetric:
    """A classifier's held-out accuracy; a GAN's quality score as summary.json reports it (fd
    with the reference classifier of a labelled data set, fid for an unlabelled upload)."""
    if task == "classifier":
        return SweepMetric(name="test_accuracy", direction="maximize")
    return SweepMetric(name="fd" if num_classes > 0 else "fid", direction="minimize")


def space_problems(spec: SweepSpec, grid_max: int = GRID_MAX_POINTS) -> list[tuple[str, str]]:
    """(field, message) for each problem of the space: a name that is not a field of the
    base's job spec, a grid too large (more than GRID_MAX_VALUES values of a parameter, or
    `grid_max` points), or a point of the space that is not a valid job spec."""
    fields = set(type(spec.base).model_fields) - FIXED_FIELDS
    problems = [
        (f"space.{name}", f"{name!r} is not a field of a {spec.base.task} job spec")
        for name in spec.space
        if name not in fields
    ]
    if problems:
        return problems
    if spec.pruner is not None and spec.base.task != "classifier":
        return [("pruner", "a GAN trial reports no per-epoch metric to prune on")]
    for name, param in spec.space.items():
        if isinstance(param, ChoiceParam):
            bad = choice_problem(param.values)
            if bad is not None:
                problems.append((f"space.{name}.values", bad))
    if problems:
        return problems
    if spec.sampler == "grid":
        for name, param in spec.space.items():
            if isinstance(param, FloatParam) and param.step is None:
                problems.append(
                    (f"space.{name}", "a grid needs a `step` for a float range, or `choice`")
                )
            elif grid_count(param) > GRID_MAX_VALUES:
                problems.append(
                    (f"space.{name}", f"a grid takes at most {GRID_MAX_VALUES} values of it")
                )
        if not problems and grid_size(spec) > grid_max:
            problems.append(("space", f"the grid has more than {grid_max} points"))
        if problems:
            return problems
    for point in space_points(spec):
        problem = _point_problem(spec.base, point)
        if problem is not None:
            return [problem]
    return []


def space_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """The points checked before anything is stored: the corners of the space (a range's
    two ends, a choice's every value); past CORNERS_MAX corners, each parameter's extremes
    with the others at their first."""
    extremes = {name: _extremes(param) for name, param in spec.space.items()}
    if math.prod(len(v) for v in extremes.values()) <= CORNERS_MAX:
        return [
            dict(zip(extremes, combo, strict=True))
            for combo in itertools.product(*extremes.values())
        ]
    first = {name: values[0] for name, values in extremes.items()}
    return [{**first, name: v} for name, values in extremes.items() for v in values]


# What the API checks against the data set catalog (services/api/submit.check_fits).
FIT_FIELDS = ("dataset", "model", "crop", "resize")


def fit_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """The space's points (space_points) that the catalog must see: one per distinct value
    of FIT_FIELDS among them; none when the space leaves those fields to the base."""
    if not set(spec.space) & set(FIT_FIELDS):
        return []
    distinct: dict[str, dict[str, Any]] = {}
    for point in space_points(spec):
        key = repr([point.get(name) for name in FIT_FIELDS])
        distinct.setdefault(key, point)
    return list(distinct.values())


def choice_problem(values: list[Any]) -> str | None:
    """Why a choice's values are not a set of distinct, finite values of one kind: a
    duplicate (by type and value), NaN or an infinity, or booleans mixed with numbers."""
    seen: set[tuple[str, Any]] = set()
    for value in values:
        if isinstance(value, float) and not math.isfinite(value):
            return f"{value!r} is not a finite number"
        key = (type(value).__name__, value)
        if key in seen:
            return f"{value!r} is given twice"
        seen.add(key)
    kinds = {type(v) for v in values}
    if bool in kinds and kinds & {int, float}:
        return "booleans and numbers cannot be mixed in one choice"
    return None


def _extremes(param: Param) -> list[Any]:
    if isinstance(param, ChoiceParam):
        return list(param.values)
    if isinstance(param, IntParam):
        top = param.low + (param.high - param.low) // param.step * param.step
        return [param.low, top] if top != param.low else [param.low]
    return [param.low, param.high] if param.high != param.low else [param.low]


def _point_problem(base: JobSpec, point: dict[str, Any]) -> tuple[str, str] | None:
    """The first parameter at fault when base + point is not a valid job spec."""
    try:
        trial_spec(base, point)
    except ValidationError as exc:
        error = exc.errors()[0]
        ctx = error.get("ctx") or {}
        loc = [p for p in error["loc"] if isinstance(p, str) and p != base.task]
        field = ctx.get("field") if isinstance(ctx.get("field"), str) else (loc[0] if loc else "")
        name = field if field in point else next(iter(point))
        shown = {k: point[k] for k in sorted(point)}
        return f"space.{name}", f"the point {shown} gives an invalid job spec: {error['msg']}"
    return None


def trial_spec(base: JobSpec, params: dict[str, Any]) -> JobSpec:
    """The base spec with a trial's parameters, validated as a submitted job spec is."""
    data = {**base.model_dump(mode="json", exclude_unset=True), "task": base.task, **params}
    return JobSpecAdapter.validate_python(data)


def grid_count(param: Param) -> int:
    """How many values the parameter has on a grid, counted (nothing is built)."""
    if isinstance(param, ChoiceParam):
        return len(param.values)
    if isinstance(param, IntParam):
        return (param.high - param.low) // param.step + 1
    assert param.step is not None
    low, step = Decimal(str(param.low)), Decimal(str(param.step))
    return int((Decimal(str(param.high)) - low) / step) + 1


def grid_values(param: Param) -> list[Any]:
    """The parameter's values on a grid (at most GRID_MAX_VALUES: space_problems refuses
    more, so a larger range is never built)."""
    count = min(grid_count(param), GRID_MAX_VALUES)
    if isinstance(param, ChoiceParam):
        return list(param.values)
    if isinstance(param, IntParam):
        return [param.low + i * param.step for i in range(count)]
    assert param.step is not None
    low, step = Decimal(str(param.low)), Decimal(str(param.step))
    return [float(low + i * step) for i in range(count)]


def grid_size(spec: SweepSpec) -> int:
    return math.prod(grid_count(p) for p in spec.space.values())


def trials_to_run(spec: SweepSpec) -> int:
    """n_trials, or a smaller grid's size (each grid point once)."""
    return min(spec.n_trials, grid_size(spec)) if spec.sampler == "grid" else spec.n_trials


def make_sampler(spec: SweepSpec, asked: int) -> BaseSampler:
    """The spec's sampler. Random and TPE are seeded with seed + trials asked before, so a
    sampler made again (another pass, another API process) does not draw the same points;
    TPE uses the constant liar, since `parallel` trials are asked before any is told."""
    if spec.sampler == "grid":
        space = {name: grid_values(p) for name, p in spec.space.items()}
        return GridSampler(space, seed=spec.seed)
    if spec.sampler == "random":
        return RandomSampler(seed=spec.seed + asked)
    return TPESampler(seed=spec.seed + asked, constant_liar=True)


def make_pruner(spec: SweepSpec) -> BasePruner:
    if spec.pruner is None:
        return NopPruner()
    return MedianPruner(
        n_startup_trials=spec.pruner.n_startup_trials, n_warmup_steps=spec.pruner.n_warmup_steps
    )


def suggest(trial: optuna.Trial, space: dict[str, Param]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, p in space.items():
        if isinstance(p, ChoiceParam):
            params[name] = trial.suggest_categorical(name, p.values)
        elif isinstance(p, IntParam):
            params[name] = trial.suggest_int(name, p.low, p.high, step=p.step, log=p.log)
        else:
            params[name] = trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
    return params


def metric_value(result: dict[str, Any] | None, name: str) -> float | None:
    """The metric in a succeeded job's result (summary.json): `metrics`, else its best."""
    if not result:
        return None
    value = (result.get("metrics") or {}).get(name)
    best = result.get("best") or {}
    if value is None and best.get("metric") == name:
        value = best.get("value")
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


# --- the driver


class TrialsWait(Exception):
    """No trial can be queued now (the owner's queue is full, or the planner's rate limit):
    the sweep asks again on a later pass."""


class TrialRefused(Exception):
    """The trial's job was refused (a 422): the trial fails with the reason."""


class _Cancelled(Exception):
    """The sweep was cancelled while this pass was queueing its trials."""


# submit(record, spec, trial number) -> the job id (TrialsWait, TrialRefused)
Submit = Callable[[SweepRecord, JobSpec, int], str]
CancelJob = Callable[[str], None]


class SweepDriver:
    """Advances sweeps. `submit` queues a trial's job through the API's own submit path
    (same validation, owner, quotas), with an Idempotency-Key made of the sweep id and the
    trial number, so a pass that died after queueing it finds the same job again."""

    def __init__(self, sweeps: SweepRegistry, submit: Submit, cancel_job: CancelJob) -> None:
        self.sweeps, self.submit, self.cancel_job = sweeps, submit, cancel_job
        self._storages: dict[str, JournalStorage] = {}
        self._guard = threading.Lock()
        self._pass = threading.local()  # this thread's pass: its sweep and lock token

    def storage(self, sweep_id: str) -> JournalStorage:
        """The sweep's study storage, kept: it reads only the journal's new entries."""
        with self._guard:
            if sweep_id not in self._storages:
                self._storages[sweep_id] = self.sweeps.study_storage(sweep_id)
            return self._storages[sweep_id]

    def advance(self, sweep_id: str, budget_s: float | None = None) -> SweepRecord | None:
        """One pass over the sweep; its record afterwards, or None when another process is
        advancing it now. With `budget_s`, no trial is queued once that much time has passed
        (the next pass queues the rest)."""
        token = self.sweeps.lock(sweep_id, LOCK_S)
        if token is None:
            return None
        self._pass.lock = (sweep_id, token)
        self._pass.deadline = None if budget_s is None else time.monotonic() + budget_s
        try:
            record = self.sweeps.get(sweep_id)
            if record.finished_at is None:
                record = self._advance(record)
            if record.finished_at is not None:
                with self._guard:  # its study is read no more here
                    self._storages.pop(sweep_id, None)
            return record
        finally:
            self.sweeps.unlock(sweep_id, token)

    def advance_all(self, budget_s: float = PASS_BUDGET_S) -> int:
        """Advance every running sweep (the reconciler's sweep pass), each for at most
        `budget_s` of queueing (and `parallel` trials); how many it advanced."""
        done = 0
        for sweep_id in self.sweeps.running():
            try:
                if self.advance(sweep_id, budget_s) is not None:
                    done += 1
            except Exception:  # one bad sweep must not stop the others
                log.exception("sweep %s: advance failed", sweep_id)
        return done

    def _advance(self, record: SweepRecord) -> SweepRecord:
        entries = {t.number: t for t in self.sweeps.trials(record.id)}
        record.asked = len(entries)  # the table, not a counter a failed pass did not save
        study = optuna.create_study(  # made by the first pass, loaded by the others
            storage=self.storage(record.id),
            study_name=record.id,
            direction=record.metric.direction,
            sampler=make_sampler(record.spec, record.asked),
            load_if_exists=True,
        )
        # Outcomes are told through a random sampler's view of the study: a grid sampler
        # told its last point calls study.stop(), which only works inside study.optimize().
        teller = optuna.load_study(
            study_name=record.id, storage=self.storage(record.id), sampler=RandomSampler()
        )
        # Optuna's trials, read once per pass (no deep copies); a trial asked in this pass is
        # not among them (told with skip_if_finished, so a stale state is harmless).
        self._pass.frozen = {t.number: t for t in teller.get_trials(deepcopy=False)}
        states = self.sweeps.job_states([t.job_id for t in entries.values() if t.job_id])
        self._orphans(teller, entries)
        self._tell(teller, record, entries, states)
        if not record.cancel_requested:
            try:
                self._ask(study, teller, record, entries, states)
            except _Cancelled:
                update: dict[str, Any] = {"cancel_requested": True, "waiting": None}
                record = record.model_copy(update={**update, "status": "cancelled"})
                queued = [t.job_id for t in entries.values() if t.job_id]
                states = self.sweeps.job_states(queued)  # with the jobs this pass queued
        if record.cancel_requested:
            self._cancel(teller, record, entries, states)
        told = all(t.state != "RUNNING" for t in entries.values())
        if told and (record.cancel_requested or record.asked >= record.n_trials):
            record = finished_now(record)
        self.sweeps.save(record)
        return record

    def _orphans(self, study: optuna.Study, entries: dict[int, TrialEntry]) -> None:
        """An Optuna trial still RUNNING with no row in the table was asked by a pass that
        died before it recorded it (this pass holds the lock: nobody else is asking): FAIL."""
        for number, frozen in self._pass.frozen.items():
            if frozen.state is TrialState.RUNNING and number not in entries:
                log.warning(
                    "sweep %s: trial %d was never recorded: failed", study.study_name, number
                )
                study.tell(number, state=TrialState.FAIL, skip_if_finished=True)

    def _tell(
        self,
        study: optuna.Study,
        record: SweepRecord,
        entries: dict[int, TrialEntry],
        states: dict[str, JobState],
    ) -> None:
        """Tell Optuna how each trial whose job ended did."""
        for entry in entries.values():
            if entry.state != "RUNNING" or entry.job_id is None:
                continue
            job = states.get(entry.job_id)
            if job is None:  # its record is gone: it will never end
                entry.reason = f"its job {entry.job_id} no longer exists"
                self._told(study, entry, TrialState.FAIL, None)
                self.sweeps.put_trial(record.id, entry)
                continue
            if not job.status.is_terminal():
                continue
            value = None
            if job.status is JobStatus.SUCCEEDED:
                value = metric_value(job.result, record.metric.name)
                state = TrialState.COMPLETE if value is not None else TrialState.FAIL
                if value is None:
                    entry.reason = f"its result has no {record.metric.name}"
            elif job.status is JobStatus.PRUNED:
                state = TrialState.PRUNED
            else:
                state = TrialState.FAIL
            self._told(study, entry, state, value)
            self.sweeps.put_trial(record.id, entry)

    def _told(
        self, study: optuna.Study, entry: TrialEntry, state: TrialState, value: float | None
    ) -> None:
        """Tell Optuna (unless a pass that died after telling it did already)."""
        frozen = self._pass.frozen.get(entry.number)
        if frozen is None or frozen.state is TrialState.RUNNING:
            if state is TrialState.COMPLETE:
                study.tell(entry.number, value, skip_if_finished=True)
            else:
                study.tell(entry.number, state=state, skip_if_finished=True)
        entry.state = state.name
        entry.value = value
        if state is TrialState.PRUNED and frozen is not None and frozen.intermediate_values:
            entry.value = frozen.intermediate_values[max(frozen.intermediate_values)]

    def _cancel(
        self,
        study: optuna.Study,
        record: SweepRecord,
        entries: dict[int, TrialEntry],
        states: dict[str, JobState],
    ) -> None:
        """A cancelled sweep: cancel every trial's job still queued or running; a trial that
        never had a job fails at once."""
        for entry in entries.values():
            if entry.state != "RUNNING":
                continue
            if entry.job_id is None:
                entry.reason = "the sweep was cancelled before it was queued"
                self._told(study, entry, TrialState.FAIL, None)
                self.sweeps.put_trial(record.id, entry)
                continue
            job = states.get(entry.job_id)
            if job is not None and not job.status.is_terminal():
                try:
                    self.cancel_job(entry.job_id)
                except Exception as exc:  # ended meanwhile: told on the next pass
                    log.info("sweep %s: trial job %s: %s", record.id, entry.job_id, exc)

    def _ask(
        self,
        study: optuna.Study,
        teller: optuna.Study,
        record: SweepRecord,
        entries: dict[int, TrialEntry],
        states: dict[str, JobState],
    ) -> None:
        """Queue trials asked earlier that are still waiting for room, then ask new ones
        while fewer than `parallel` are in flight."""
        record.waiting = None

        def in_flight() -> int:
            return sum(
                1
                for t in entries.values()
                if t.state == "RUNNING"
                and (
                    t.job_id is None
                    or t.job_id not in states
                    or not states[t.job_id].status.is_terminal()
                )
            )

        try:
            for entry in sorted(entries.values(), key=lambda t: t.number):
                if entry.job_id is None and entry.state == "RUNNING" and self._in_budget():
                    self._queue(teller, record, entry)
            while (
                record.asked < record.n_trials
                and in_flight() < record.spec.parallel
                and self._in_budget()
            ):
                trial = study.ask()
                entry = TrialEntry(number=trial.number, params=suggest(trial, record.spec.space))
                entries[entry.number] = entry
                self.sweeps.put_trial(record.id, entry)  # before its job: a retry finds it
                record.asked = len(entries)
                self._queue(teller, record, entry)
        except TrialsWait as exc:
            record.waiting = str(exc)

    def _in_budget(self) -> bool:
        deadline: float | None = self._pass.deadline
        return deadline is None or time.monotonic() < deadline

    def _queue(self, study: optuna.Study, record: SweepRecord, entry: TrialEntry) -> None:
        sweep_id, token = self._pass.lock
        if not self.sweeps.relock(sweep_id, token, LOCK_S):  # a submit may wait for a probe
            raise TrialsWait("another pass took the sweep over")
        if self.sweeps.get(sweep_id).cancel_requested:  # cancelled since the pass began
            raise _Cancelled()
        try:
            spec = trial_spec(record.spec.base, entry.params)
            entry.job_id = self.submit(record, spec, entry.number)
        except (ValidationError, TrialRefused) as exc:
            entry.reason = f"its job was refused: {exc}"
            self._told(study, entry, TrialState.FAIL, None)
        self.sweeps.put_trial(record.id, entry)
        if not self.sweeps.relock(sweep_id, token, LOCK_S):  # the submit outlived the lock
            raise TrialsWait("another pass took the sweep over")


def idempotency_key(sweep_id: str, number: int) -> str:
    """The Idempotency-Key a trial's job is queued with."""
    return f"{sweep_id}.trial.{number}"


# --- the worker's side: pruning


class TrialReporter:
    """Reports a trial's evaluations to its sweep's study and says when to stop. One per
    worker process; each sweep's storage is kept (it reads only new journal entries)."""

    def __init__(self, sweeps: SweepRegistry) -> None:
        self.sweeps = sweeps
        self._studies: dict[str, tuple[SweepRecord, optuna.Study]] = {}

    KEEP = 16  # studies kept (a worker trains trials of a few sweeps at a time)

    def _study(self, sweep_id: str) -> tuple[SweepRecord, optuna.Study]:
        if sweep_id not in self._studies:
            while len(self._studies) >= self.KEEP:
                self._studies.pop(next(iter(self._studies)))
            record = self.sweeps.get(sweep_id)
            storage = self.sweeps.study_storage(sweep_id)
            study = optuna.load_study(
                study_name=sweep_id, storage=storage, pruner=make_pruner(record.spec)
            )
            self._studies[sweep_id] = (record, study)
        return self._studies[sweep_id]

    def metric(self, job: JobRecord) -> str | None:
        """The metric the job's sweep optimises (None for a job of no sweep)."""
        if job.sweep_id is None:
            return None
        return self._study(job.sweep_id)[0].metric.name

    def evaluated(
        self, job: JobRecord, step: int, epoch: int, metrics: dict[str, float]
    ) -> str | None:
        """After an epoch's evaluation (`epoch` from 0, at training step `step`): report the
        sweep's metric if it is among `metrics`, at Optuna step epoch + 1."""
        name = self.metric(job)
        if name is None or name not in metrics:
            return None
        return self.report(job, epoch + 1, metrics[name], step)

    def report(
        self, job: JobRecord, epochs: int, value: float, step: int | None = None
    ) -> str | None:
        """Report the trial's `value` after `epochs` epochs to Optuna (its step: trials with
        another batch_size line up by epoch, not by optimiser step); the reason to prune it
        (naming the rule, the epoch and the training step), or None to go on."""
        if job.sweep_id is None or job.trial is None or not math.isfinite(value):
            return None
        record, study = self._study(job.sweep_id)
        if record.spec.pruner is None:
            return None
        storage = study._storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, job.trial)
        if storage.get_trial(trial_id).state is not TrialState.RUNNING:
            return None  # told already (the sweep was cancelled, say)
        trial = optuna.trial.Trial(study, trial_id)
        trial.report(value, epochs)
        if not trial.should_prune():
            return None
        return self._reason(study, trial_id, record, epochs, step)

    def _reason(
        self, study: optuna.Study, trial_id: int, record: SweepRecord, epochs: int, step: int | None
    ) -> str:
        name, direction = record.metric.name, record.metric.direction
        mine = study._storage.get_trial(trial_id).intermediate_values
        best = max(mine.values()) if direction == "maximize" else min(mine.values())
        others = [
            t.intermediate_values[epochs]
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if epochs in t.intermediate_values
        ]
        median = float(np.nanmedian(others)) if others else float("nan")
        when = f"epoch {epochs}" + (f" (step {step})" if step is not None else "")
        return (
            f"pruned by MedianPruner at {when}: {name} {best:.4g} is worse than the median "
            f"{median:.4g} of {len(others)} earlier trials at this epoch"
        )
