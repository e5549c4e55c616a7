"""The sweep driver's logic (shared/sweeps.py) without Redis: the space's checks, the grid, the
metric in a result, and SweepDriver.advance over an in-memory registry and Optuna storage
(asks up to `parallel`, waits on a full queue, tells outcomes, cancels, ends)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import optuna
import pytest
from pydantic import ValidationError

from shared.planning import plan_key
from shared.schemas import JobSpec, SweepSpec
from shared.state.records import JobRecord
from shared.state.sweeps import JobState, SweepRecord, TrialEntry, finished_now
from shared.status import JobStatus
from shared.sweeps import (
    SweepDriver,
    TrialRefused,
    TrialReporter,
    TrialsWait,
    default_metric,
    fit_points,
    grid_values,
    metric_value,
    space_problems,
    trial_spec,
    trials_to_run,
)
from tests.conftest import run_async

BASE = {"task": "classifier", "max_steps": 5}


def spec(**over: Any) -> SweepSpec:
    body: dict[str, Any] = {
        "base": BASE,
        "space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
        "n_trials": 4,
        **over,
    }
    return SweepSpec.model_validate(body)


@pytest.mark.parametrize(
    ("space", "field"),
    [
        ({"bogus": {"type": "choice", "values": [1]}}, "space.bogus"),
        ({"task": {"type": "choice", "values": ["gan"]}}, "space.task"),
        ({"lr": {"type": "float", "low": 1e-4, "high": 2.0}}, "space.lr"),
        ({"epochs": {"type": "float", "low": 1, "high": 3}}, "space.epochs"),
        ({"mode": {"type": "choice", "values": ["fast", "book"]}}, "space.mode"),
        ({"model": {"type": "choice", "values": ["book_cnn", "conv_gan"]}}, "space.model"),
    ],
)
def test_a_space_that_can_give_an_invalid_spec_names_the_parameter(
    space: dict[str, Any], field: str
) -> None:
    problems = space_problems(spec(space=space))
    assert problems and problems[0][0] == field, problems


def test_combinations_of_extremes_are_checked() -> None:
    """Each parameter alone is fine; book mode with a non-book lr is not."""
    book = spec(
        base={**BASE, "mode": "book", "batch_size": 1},
        space={"lr": {"type": "choice", "values": [0.001, 0.01]}},
    )
    assert space_problems(book)[0][0] == "space.lr"


def test_a_valid_space_has_no_problems() -> None:
    ok = spec(
        space={
            "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "seed": {"type": "int", "low": 0, "high": 99},
            "batch_size": {"type": "choice", "values": [32, 64, 128]},
        }
    )
    assert space_problems(ok) == []


def test_the_catalog_sees_one_point_per_data_set_and_shape_the_space_names() -> None:
    """The API checks these against the data set catalog (an upload named in a choice, a
    resize a model cannot take) before anything is stored; lr and seed leave it alone."""
    assert fit_points(spec()) == []
    named = spec(
        space={
            "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "dataset": {"type": "choice", "values": ["fake", "mnist-5k", "ds-0123456789abcdef"]},
        }
    )
    assert sorted(p["dataset"] for p in fit_points(named)) == [
        "ds-0123456789abcdef",
        "fake",
        "mnist-5k",
    ]


def test_range_rules_are_checked_by_the_schema() -> None:
    with pytest.raises(ValidationError, match="low"):
        spec(space={"lr": {"type": "float", "low": 0.1, "high": 0.01}})
    with pytest.raises(ValidationError, match="log range needs low > 0"):
        spec(space={"seed": {"type": "int", "low": 0, "high": 9, "log": True}})
    with pytest.raises(ValidationError, match="either log or stepped"):
        spec(space={"lr": {"type": "float", "low": 0.1, "high": 0.5, "log": True, "step": 0.1}})


@pytest.mark.parametrize(
    ("base", "field"),
    [
        ({**BASE, "epochs": 0}, "base.epochs"),
        ({"task": "nope"}, "base.task"),
        ({**BASE, "mode": "book", "lr": 0.5, "batch_size": 1}, "base.lr"),
        ("not a spec", "base"),
    ],
)
def test_a_bad_base_names_its_field(base: Any, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        spec(base=base)
    assert caught.value.errors()[0]["ctx"]["field"] == field


def test_a_grid_needs_steps_and_caps_n_trials() -> None:
    float_range = spec(sampler="grid")
    assert space_problems(float_range)[0][0] == "space.lr"
    grid = spec(
        sampler="grid",
        n_trials=100,
        space={
            "lr": {"type": "float", "low": 0.01, "high": 0.05, "step": 0.01},
            "seed": {"type": "int", "low": 0, "high": 4, "step": 2},
        },
    )
    assert space_problems(grid) == []
    assert grid_values(grid.space["lr"]) == [0.01, 0.02, 0.03, 0.04, 0.05]
    assert grid_values(grid.space["seed"]) == [0, 2, 4]
    assert trials_to_run(grid) == 15
    assert trials_to_run(spec(n_trials=100)) == 100


def test_trial_spec_is_the_base_with_the_params() -> None:
    made = trial_spec(spec().base, {"lr": 0.02, "seed": 3})
    assert made.lr == 0.02 and made.seed == 3 and made.max_steps == 5
    assert made.batch_size == 128  # the base's fast defaults stay


def test_default_metrics_and_the_metric_in_a_result() -> None:
    assert default_metric("classifier", 10).model_dump() == {
        "name": "test_accuracy",
        "direction": "maximize",
    }
    assert default_metric("gan", 10).name == "fd"
    assert default_metric("gan", 0).name == "fid"
    assert default_metric("cgan", 10).direction == "minimize"
    assert metric_value({"metrics": {"test_accuracy": 0.9}}, "test_accuracy") == 0.9
    best = {"metric": "fd", "value": 12.5}
    assert metric_value({"metrics": {}, "best": best}, "fd") == 12.5
    assert metric_value({"metrics": {"fd": float("nan")}}, "fd") is None
    assert metric_value(None, "fd") is None


# --- SweepDriver over an in-memory registry


class MemorySweeps:
    """SweepRegistry's interface the driver uses, in memory, with Optuna's in-memory storage."""

    def __init__(self) -> None:
        self.records: dict[str, SweepRecord] = {}
        self.entries: dict[str, dict[int, TrialEntry]] = {}
        self.jobs: dict[str, JobState] = {}
        self.storage = optuna.storages.InMemoryStorage()
        self.locked = False

    def study_storage(self, sweep_id: str) -> Any:
        return self.storage

    def get(self, sweep_id: str) -> SweepRecord:
        return self.records[sweep_id].model_copy(deep=True)

    def save(self, record: SweepRecord) -> None:
        self.records[record.id] = record.model_copy(deep=True)

    def trials(self, sweep_id: str) -> list[TrialEntry]:
        found = self.entries.get(sweep_id, {}).values()
        return sorted((t.model_copy(deep=True) for t in found), key=lambda t: t.number)

    def put_trial(self, sweep_id: str, entry: TrialEntry) -> None:
        self.entries.setdefault(sweep_id, {})[entry.number] = entry.model_copy(deep=True)

    def job_states(self, job_ids: list[str]) -> dict[str, JobState]:
        return {i: self.jobs[i] for i in job_ids if i in self.jobs}

    def running(self) -> list[str]:
        return [i for i, r in self.records.items() if r.finished_at is None]

    def lock(self, sweep_id: str, ttl_s: float) -> str | None:
        if self.locked:
            return None
        self.locked = True
        return "token"

    def relock(self, sweep_id: str, token: str, ttl_s: float) -> bool:
        return self.locked

    def unlock(self, sweep_id: str, token: str) -> None:
        self.locked = False


class Harness:
    def __init__(self, sweep: SweepSpec, room: int = 100) -> None:
        self.sweeps = MemorySweeps()
        self.room = room
        self.submitted: list[tuple[int, JobSpec]] = []
        self.cancelled: list[str] = []
        self.refuse: set[int] = set()
        self.driver = SweepDriver(self.sweeps, self.submit, self.cancel)  # type: ignore[arg-type]
        self.record = SweepRecord(
            id="sw-0000000000000001",
            owner="dev",
            spec=sweep,
            metric=default_metric("classifier", 10),
            n_trials=trials_to_run(sweep),
            created_at=datetime.now(UTC),
        )
        self.sweeps.save(self.record)

    def submit(self, record: SweepRecord, spec: JobSpec, number: int) -> str:
        if number in self.refuse:
            raise TrialRefused("no")
        queued = sum(1 for s in self.sweeps.jobs.values() if s.status is JobStatus.QUEUED)
        if queued >= self.room:
            raise TrialsWait("waiting for room: the queue is full")
        job_id = f"job{number:013d}"
        self.sweeps.jobs[job_id] = JobState(JobStatus.QUEUED, None, None)
        self.submitted.append((number, spec))
        return job_id

    def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)
        self.sweeps.jobs[job_id] = JobState(JobStatus.CANCELLED, None, None)

    def end(self, job_id: str, status: JobStatus, accuracy: float | None = None) -> None:
        result = None if accuracy is None else {"metrics": {"test_accuracy": accuracy}}
        self.sweeps.jobs[job_id] = JobState(status, None, result)

    def advance(self) -> SweepRecord:
        found = self.driver.advance(self.record.id)
        assert found is not None
        return found


def test_the_driver_keeps_parallel_trials_in_flight_and_ends_the_sweep() -> None:
    h = Harness(spec(n_trials=5, parallel=2, sampler="random"))
    record = h.advance()
    assert record.asked == 2 and len(h.submitted) == 2 and record.finished_at is None
    assert h.advance().asked == 2  # idempotent: nothing ended, nothing new
    h.end("job0000000000000", JobStatus.SUCCEEDED, 0.5)
    h.end("job0000000000001", JobStatus.FAILED)
    record = h.advance()
    assert record.asked == 4
    entries = {t.number: t for t in h.sweeps.trials(record.id)}
    assert entries[0].state == "COMPLETE" and entries[0].value == 0.5
    assert entries[1].state == "FAIL"
    for n, acc in ((2, 0.7), (3, 0.6)):
        h.end(f"job{n:013d}", JobStatus.SUCCEEDED, acc)
    assert h.advance().asked == 5
    h.end("job0000000000004", JobStatus.PRUNED)
    record = h.advance()
    assert record.status == "finished" and record.finished_at is not None
    study = optuna.load_study(study_name=record.id, storage=h.sweeps.storage)
    assert [t.state.name for t in study.trials] == [
        "COMPLETE",
        "FAIL",
        "COMPLETE",
        "COMPLETE",
        "PRUNED",
    ]
    assert study.best_trial.number == 2
    # each trial's spec is the base with its own lr, drawn in the space
    assert all(1e-4 <= s.lr <= 1e-1 and s.max_steps == 5 for _, s in h.submitted)


def test_a_full_queue_makes_the_sweep_wait_then_queue_the_same_trial() -> None:
    h = Harness(spec(n_trials=3, parallel=3, sampler="random"), room=1)
    record = h.advance()
    assert record.asked == 2 and record.waiting and "full" in record.waiting
    waiting = [t for t in h.sweeps.trials(record.id) if t.job_id is None]
    assert [t.number for t in waiting] == [1]
    assert h.advance().asked == 2  # still full: the asked trial waits, no new one
    h.sweeps.jobs["job0000000000000"] = JobState(JobStatus.RUNNING, None, None)
    record = h.advance()
    assert [n for n, _ in h.submitted] == [0, 1]  # trial 1 queued with its own params
    assert record.asked == 3 and record.waiting  # trial 2 waits behind trial 1
    params = {t.number: t.params for t in h.sweeps.trials(record.id)}
    assert h.submitted[1][1].lr == params[1]["lr"]


def test_a_refused_trial_fails_and_the_sweep_goes_on() -> None:
    h = Harness(spec(n_trials=2, parallel=2, sampler="random"))
    h.refuse = {0}
    record = h.advance()
    entries = {t.number: t for t in h.sweeps.trials(record.id)}
    assert entries[0].state == "FAIL" and entries[0].reason == "its job was refused: no"
    assert entries[1].job_id is not None


def test_cancel_cancels_running_trials_and_fails_waiting_ones() -> None:
    h = Harness(spec(n_trials=4, parallel=3, sampler="random"), room=2)
    h.advance()
    record = h.sweeps.get(h.record.id)
    record.cancel_requested, record.status = True, "cancelled"
    h.sweeps.save(record)
    record = h.advance()
    assert sorted(h.cancelled) == ["job0000000000000", "job0000000000001"]
    waiting = [t for t in h.sweeps.trials(record.id) if t.job_id is None]
    assert waiting and all(t.state == "FAIL" for t in waiting)
    assert record.finished_at is None  # its trials are told on the next pass
    record = h.advance()
    assert record.status == "cancelled" and record.finished_at is not None
    assert record.asked == 3


def test_a_grid_runs_each_point_once_and_telling_the_last_is_fine() -> None:
    h = Harness(
        spec(
            sampler="grid",
            n_trials=10,
            parallel=1,
            space={"seed": {"type": "choice", "values": [1, 2, 3]}},
        )
    )
    seen = []
    for _ in range(3):
        h.advance()
        number, trial = h.submitted[-1]
        seen.append(trial.seed)
        h.end(f"job{number:013d}", JobStatus.SUCCEEDED, 0.5)
    record = h.advance()
    assert sorted(seen) == [1, 2, 3]
    assert record.n_trials == 3 and record.status == "finished"


def test_a_pass_that_cannot_take_the_lock_does_nothing() -> None:
    h = Harness(spec())
    h.sweeps.locked = True
    assert h.driver.advance(h.record.id) is None
    assert h.submitted == []


def test_finished_now_keeps_cancelled() -> None:
    h = Harness(spec())
    assert finished_now(h.record).status == "finished"
    cancelled = h.record.model_copy(update={"cancel_requested": True})
    assert finished_now(cancelled).status == "cancelled"


def test_the_reporter_prunes_a_worse_trial_with_a_reason_naming_rule_and_step() -> None:
    pruned_spec = spec(pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0})
    h = Harness(pruned_spec)
    study = optuna.create_study(
        storage=h.sweeps.storage, study_name=h.record.id, direction="maximize"
    )
    first = study.ask()
    first.report(0.9, 1)  # Optuna's step: epochs done (trials of another batch_size line up)
    study.tell(first, 0.95)
    second = study.ask()
    reporter = TrialReporter(h.sweeps)  # type: ignore[arg-type]
    job = JobRecord(
        id="0000000000000002",
        status=JobStatus.RUNNING,
        spec=trial_spec(pruned_spec.base, {"lr": 0.01}),
        created_at=datetime.now(UTC),
        sweep_id=h.record.id,
        trial=second.number,
    )
    assert reporter.evaluated(job, 32, 0, {"loss": 1.0}) is None  # no test_accuracy: nothing
    reason = reporter.evaluated(job, 32, 0, {"test_accuracy": 0.1})
    assert reason == (
        "pruned by MedianPruner at epoch 1 (step 32): test_accuracy 0.1 is worse than the "
        "median 0.9 of 1 earlier trials at this epoch"
    )
    assert study.trials[second.number].intermediate_values == {1: 0.1}
    third = study.ask()
    better = job.model_copy(update={"trial": third.number})
    assert reporter.evaluated(better, 64, 0, {"test_accuracy": 0.95}) is None
    plain = job.model_copy(update={"sweep_id": None, "trial": None})
    assert reporter.report(plain, 1, 0.0) is None


def test_a_pruner_on_a_gan_base_names_the_pruner() -> None:
    gan = spec(
        base={"task": "gan", "max_steps": 5},
        space={"seed": {"type": "choice", "values": [1, 2]}},
        pruner={"type": "median"},
    )
    assert space_problems(gan)[0][0] == "pruner"
    assert space_problems(gan.model_copy(update={"pruner": None})) == []


def test_trials_that_vary_numbers_share_one_plan_key() -> None:
    """The planner probes once per plan key (services/api/planner.py: a cached or in-flight
    key costs nothing against PLAN_PROBES_PER_MINUTE), so a sweep over numbers probes once."""
    sweep = spec(
        space={
            "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "seed": {"type": "int", "low": 0, "high": 99},
            "batch_size": {"type": "choice", "values": [16, 64, 256]},
            "epochs": {"type": "int", "low": 1, "high": 5},
        }
    )
    keys = {
        plan_key(trial_spec(sweep.base, params), (1, 28, 28), 10)
        for params in (
            {"lr": 1e-4, "seed": 0, "batch_size": 16, "epochs": 1},
            {"lr": 0.1, "seed": 99, "batch_size": 256, "epochs": 5},
            {"lr": 0.003, "seed": 7, "batch_size": 64, "epochs": 2},
        )
    }
    assert len(keys) == 1


def test_a_pass_that_lost_its_lock_queues_nothing_more() -> None:
    h = Harness(spec(n_trials=3, parallel=3, sampler="random"))
    h.sweeps.relock = lambda *_: False  # type: ignore[method-assign]
    record = h.advance()
    assert h.submitted == [] and record.waiting == "another pass took the sweep over"
    assert record.asked == 1  # asked and recorded: the next pass queues it


# --- review fixes (issue 19)


def test_a_huge_int_range_on_a_grid_is_counted_not_built() -> None:
    """seed 0..2**31-1 on a grid: refused at once (it was materialised before the check)."""
    huge = spec(sampler="grid", space={"seed": {"type": "int", "low": 0, "high": 2**31 - 1}})
    assert space_problems(huge) == [("space.seed", "a grid takes at most 1000 values of it")]
    assert trials_to_run(spec(n_trials=3, space=huge.space)) == 3


def test_a_grid_caps_values_per_parameter_and_points_in_all() -> None:
    wide = spec(
        sampler="grid",
        space={"lr": {"type": "float", "low": 0.0001, "high": 0.1, "step": 0.00001}},
    )
    assert space_problems(wide)[0][0] == "space.lr"
    both = spec(
        sampler="grid",
        space={
            "seed": {"type": "int", "low": 0, "high": 99},
            "lr": {"type": "float", "low": 0.001, "high": 0.02, "step": 0.001},
        },
    )
    assert space_problems(both, grid_max=1000) == [("space", "the grid has more than 1000 points")]
    assert space_problems(both, grid_max=2000) == []


@pytest.mark.parametrize(
    "values",
    [[32, 64, 32], [0.1, float("nan")], [0.1, float("inf")], [True, 1], [False, 0.5]],
)
def test_bad_choice_values_name_the_values(values: list[Any]) -> None:
    bad = spec(space={"batch_size": {"type": "choice", "values": values}})
    assert space_problems(bad)[0][0] == "space.batch_size.values"


def test_choices_of_one_value_in_two_types_are_distinct() -> None:
    ok = spec(space={"lr": {"type": "choice", "values": [0.01, 0.02]}})
    assert space_problems(ok) == []


def test_a_pass_that_dies_mid_way_does_not_ask_past_n_trials() -> None:
    h = Harness(spec(n_trials=2, parallel=3, sampler="random"))
    submit = h.submit

    def dies_on_the_second(record: SweepRecord, job: JobSpec, number: int) -> str:
        if number == 1:
            raise RuntimeError("the API went away")
        return submit(record, job, number)

    h.driver.submit = dies_on_the_second
    with pytest.raises(RuntimeError):
        h.advance()
    h.driver.submit = submit
    record = h.advance()
    assert record.asked == 2 and sorted(n for n, _ in h.submitted) == [0, 1]
    study = optuna.load_study(study_name=record.id, storage=h.sweeps.storage)
    assert len(study.trials) == 2


def test_a_trial_asked_but_never_recorded_is_failed_by_the_next_pass() -> None:
    h = Harness(spec(n_trials=2, parallel=1, sampler="random"))
    h.advance()
    study = optuna.load_study(study_name=h.record.id, storage=h.sweeps.storage)
    orphan = study.ask()  # a pass that died between ask and put_trial
    h.advance()
    states = {t.number: t.state for t in study.get_trials()}
    assert states[orphan.number] is optuna.trial.TrialState.FAIL
    assert orphan.number not in {t.number for t in h.sweeps.trials(h.record.id)}


def test_a_cancel_during_a_pass_stops_its_submits() -> None:
    h = Harness(spec(n_trials=3, parallel=3, sampler="random"))
    submit = h.submit

    def cancelled_meanwhile(record: SweepRecord, job: JobSpec, number: int) -> str:
        h.sweeps.records[record.id].cancel_requested = True
        return submit(record, job, number)

    h.driver.submit = cancelled_meanwhile
    record = h.advance()
    assert [n for n, _ in h.submitted] == [0]
    assert record.cancel_requested and record.status == "cancelled"
    assert h.cancelled == ["job0000000000000"]
    entries = h.sweeps.trials(record.id)
    assert [t.state for t in entries] == ["RUNNING", "FAIL"]


def test_a_submit_that_outlives_the_lock_ends_the_pass() -> None:
    h = Harness(spec(n_trials=1, parallel=1, sampler="random"))
    answers = iter([True, False])
    h.sweeps.relock = lambda *_: next(answers)  # type: ignore[method-assign]
    record = h.advance()
    assert len(h.submitted) == 1 and record.waiting == "another pass took the sweep over"
    assert h.sweeps.trials(record.id)[0].job_id == "job0000000000000"


def test_a_pass_queues_nothing_past_its_budget() -> None:
    h = Harness(spec(n_trials=3, parallel=3, sampler="random"))
    assert h.driver.advance(h.record.id, budget_s=0.0) is not None
    assert h.submitted == []
    h.advance()  # no budget: a GET's pass
    assert len(h.submitted) == 3


def test_the_reconciler_pass_leaves_sweeps_to_their_own_thread() -> None:
    from unittest.mock import MagicMock

    from services.api.reconciler import Reconciler
    from shared.config import Settings

    planner = MagicMock()
    planner.registry.try_lock_reconciler.return_value = True
    planner.registry.active.return_value = []
    planner.workers.prune.return_value = []
    driver = MagicMock()
    Reconciler(planner, MagicMock(), MagicMock(), Settings(), driver).pass_once()
    driver.advance_all.assert_not_called()


def test_the_api_advances_sweeps_on_a_pool_of_its_own() -> None:
    """A GET's pass waits on a submit that uses asyncio.to_thread: run in the default pool
    too, advances could take every thread of it and deadlock."""
    import asyncio
    import threading
    from unittest.mock import MagicMock

    from services.api.sweeps import Sweeps

    async def main() -> str:
        api = Sweeps(MagicMock(), MagicMock(), asyncio.get_running_loop())

        def advance(sweep_id: str, budget_s: float | None = None) -> Any:
            return threading.current_thread().name

        api.driver.advance = advance  # type: ignore[method-assign]
        try:
            return str(await api._advance("sw-0000000000000001"))
        finally:
            api.close()

    assert run_async(main()).startswith("sweep-driver")
