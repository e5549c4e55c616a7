"""Sweeps against the real stack (docs/sweeps.md): a sweep's trials are ordinary jobs queued
through POST /v1/jobs' path, told to an Optuna study kept in Redis; the best trial is named;
bad sweeps are 422s naming the field; another owner sees nothing; a cancel cancels the trials;
a MedianPruner prunes a clearly worse trial with a reason that names the rule and the step."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.stack import Stack
from shared.schemas import SweepPublic
from shared.status import JobStatus
from tests.conftest import wait_for
from tests.integration.conftest import QUEUE_CAP
from trainyard.client import ApiError, Client

# Tiny trials: a few dozen steps of book_cnn on mnist-5k (4,000 images: 32 steps of 128 an epoch).
TINY: dict[str, Any] = {
    "task": "classifier",
    "max_steps": 20,
    "log_every": 5,
    "checkpoint_every": 1000,
    "sample_every": 1000,
}
LONG: dict[str, Any] = {**TINY, "max_steps": 3000, "batch_size": 8, "checkpoint_every": 100}


def finished(client: Client, sweep_id: str, timeout: float = 300) -> SweepPublic:
    return client.wait_sweep(sweep_id, timeout=timeout, poll=1.0)


def test_a_sweep_of_four_trials_ends_with_its_best_trial_named(client: Client) -> None:
    sweep = client.submit_sweep(
        {
            "name": "four lrs",
            "base": TINY,
            "space": {"lr": {"type": "choice", "values": [1e-4, 3e-3, 1e-2, 3e-2]}},
            "n_trials": 4,
            "sampler": "grid",
        }
    )
    assert sweep.status == "running" and sweep.metric.name == "test_accuracy"
    assert sweep.metric.direction == "maximize" and sweep.n_trials == 4
    done = finished(client, sweep.id)
    assert done.status == "finished" and done.counts == {"succeeded": 4}, done.trials
    assert sorted(t.params["lr"] for t in done.trials) == [1e-4, 3e-3, 1e-2, 3e-2]
    assert sorted(t.number for t in done.trials) == [0, 1, 2, 3]
    jobs = {t.job_id: client.get(t.job_id) for t in done.trials if t.job_id}
    for trial in done.trials:
        job = jobs[trial.job_id or ""]
        assert job.sweep_id == sweep.id and job.trial == trial.number
        assert job.spec.lr == trial.params["lr"] and job.spec.max_steps == 20
        assert job.result is not None
        assert trial.value == job.result["metrics"]["test_accuracy"]
    assert done.best is not None
    best_job = jobs[done.best.job_id]
    assert best_job.result is not None
    assert done.best.value == best_job.result["metrics"]["test_accuracy"]
    assert done.best.value == max(t.value for t in done.trials if t.value is not None)
    assert done.best.params == {"lr": best_job.spec.lr}
    assert sweep.id in [s.id for s in client.sweeps()]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"space": {"bogus": {"type": "choice", "values": [1]}}}, "space.bogus"),
        ({"space": {"lr": {"type": "float", "low": 1e-4, "high": 2.0}}}, "space.lr"),
        ({"space": {"epochs": {"type": "float", "low": 1, "high": 3}}}, "space.epochs"),
        ({"space": {"mode": {"type": "choice", "values": ["fast", "book"]}}}, "space.mode"),
        (
            {"space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2}}, "sampler": "grid"},
            "space.lr",
        ),
        (  # counted, not built: this range used to be materialised before the check
            {"space": {"seed": {"type": "int", "low": 0, "high": 2**31 - 1}}, "sampler": "grid"},
            "space.seed",
        ),
        (  # 40 x 40 points: past 4 x TRAINYARD_SWEEP_MAX_TRIALS
            {
                "space": {
                    "seed": {"type": "int", "low": 0, "high": 39},
                    "log_every": {"type": "int", "low": 1, "high": 40},
                },
                "sampler": "grid",
            },
            "space",
        ),
        (
            {"space": {"batch_size": {"type": "choice", "values": [8, 8]}}},
            "space.batch_size.values",
        ),
        (
            {"space": {"batch_size": {"type": "choice", "values": [True, 8]}}},
            "space.batch_size.values",
        ),
        ({"n_trials": 100_000}, "n_trials"),
        ({"n_trials": 257}, "n_trials"),  # past TRAINYARD_SWEEP_MAX_TRIALS
        ({"base": {**TINY, "dataset": "ds-0123456789abcdef"}}, "base.dataset"),
        # a data set or model the space names is checked against the catalog as the base is
        (
            {"space": {"dataset": {"type": "choice", "values": ["fake", "ds-0123456789abcdef"]}}},
            "space.dataset",
        ),
        ({"base": {**TINY, "epochs": 0}}, "base.epochs"),
        ({"base": {**TINY, "task": "nope"}}, "base.task"),
        ({"base": {**TINY, "mode": "book", "lr": 0.5, "batch_size": 1}}, "base.lr"),
    ],
)
def test_bad_sweeps_are_422s_naming_the_field(
    http: httpx.Client, change: dict[str, Any], field: str
) -> None:
    body = {
        "base": TINY,
        "space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
        "n_trials": 2,
        **change,
    }
    answer = http.post("/v1/sweeps", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field, answer.text


def test_a_book_mode_base_cannot_sweep_its_lr(http: httpx.Client) -> None:
    body = {
        "base": {**TINY, "mode": "book"},
        "space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1}},
        "n_trials": 2,
    }
    answer = http.post("/v1/sweeps", json=body)
    assert answer.status_code == 422 and answer.json()["error"]["field"] == "space.lr"


def test_another_owner_sees_nothing_of_a_sweep(as_user: dict[str, Client]) -> None:
    alice, bob, root = as_user["alice"], as_user["bob"], as_user["root"]
    sweep = alice.submit_sweep(
        {
            "base": {**TINY, "max_steps": 2},
            "space": {"seed": {"type": "int", "low": 0, "high": 9}},
            "n_trials": 1,
            "sampler": "random",
        }
    )
    for call in (bob.sweep, bob.cancel_sweep):
        with pytest.raises(ApiError) as caught:
            call(sweep.id)
        assert caught.value.status_code == 404
    assert sweep.id not in [s.id for s in bob.sweeps()]
    assert sweep.id in [s.id for s in alice.sweeps()]
    assert sweep.id in [s.id for s in root.sweeps(limit=200)]  # an admin sees everyone's
    trial_job = sweep.trials[0].job_id
    assert trial_job is not None
    with pytest.raises(ApiError) as caught:
        bob.get(trial_job)
    assert caught.value.status_code == 404
    assert alice.get(trial_job).owner == "alice"
    finished(alice, sweep.id)


def test_idempotency_key_replays_the_sweep(client: Client) -> None:
    body = {
        "base": {**TINY, "max_steps": 2},
        "space": {"seed": {"type": "choice", "values": [1]}},
        "n_trials": 1,
    }
    first = client.submit_sweep(body, idempotency_key="sweep-replay-1")
    again = client.submit_sweep(body, idempotency_key="sweep-replay-1")
    assert again.id == first.id
    with pytest.raises(ApiError) as caught:
        client.submit_sweep({**body, "n_trials": 2}, idempotency_key="sweep-replay-1")
    assert caught.value.status_code == 409
    finished(client, first.id)


def test_cancelling_a_sweep_cancels_its_trials(client: Client) -> None:
    sweep = client.submit_sweep(
        {
            "base": LONG,
            "space": {"seed": {"type": "choice", "values": [0, 1, 2]}},
            "n_trials": 6,
            "sampler": "random",
            "parallel": 3,
        }
    )
    assert len(sweep.trials) == 3  # `parallel` in flight, no more
    cancelled = client.cancel_sweep(sweep.id)
    assert cancelled.status == "cancelled" and cancelled.cancel_requested
    ids = [t.job_id for t in cancelled.trials if t.job_id]
    assert len(ids) == 3
    for job_id in ids:
        assert client.wait(job_id, timeout=120).status is JobStatus.CANCELLED
    done = finished(client, sweep.id, timeout=60)
    assert done.status == "cancelled" and done.asked == 3
    assert done.counts == {"cancelled": 3}
    with pytest.raises(ApiError) as caught:
        client.cancel_sweep(sweep.id)
    assert caught.value.status_code == 409


def test_a_median_pruner_prunes_a_clearly_worse_trial(client: Client) -> None:
    """Grid seed 4 draws the two good learning rates first (shared/sweeps.py re-makes the
    grid sampler with the sweep's seed on every pass); one at a time, so each bad trial is
    judged against finished good ones at the end of its first epoch."""
    sweep = client.submit_sweep(
        {
            "base": {**TINY, "max_steps": None, "epochs": 3},
            "space": {
                "lr": {"type": "choice", "values": [0.02, 1e-7]},
                "seed": {"type": "choice", "values": [0, 1]},
            },
            "n_trials": 4,
            "sampler": "grid",
            "seed": 4,
            "parallel": 1,
            "pruner": {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        }
    )
    done = finished(client, sweep.id, timeout=600)
    pruned = [t for t in done.trials if t.status is JobStatus.PRUNED]
    # Both bad trials; a good one may be too (with one startup trial, anything below the
    # first trial's accuracy at a step is below the median).
    assert {t.number for t in done.trials if t.params["lr"] == 1e-7} <= {
        t.number for t in pruned
    }, done.trials
    for trial in pruned:
        assert trial.reason is not None, trial
        assert trial.reason.startswith("pruned by MedianPruner at epoch "), trial.reason
        assert "test_accuracy" in trial.reason and "is worse than the median" in trial.reason
        job = client.get(trial.job_id or "")
        assert job.status is JobStatus.PRUNED and job.error == trial.reason
        assert job.total_steps is not None and job.step < job.total_steps
    first = done.trials[0]  # n_startup_trials=1: the first trial is never pruned
    assert first.status is JobStatus.SUCCEEDED and first.params["lr"] == 0.02
    assert done.best is not None and done.best.params["lr"] == 0.02
    assert done.counts.get("pruned", 0) == len(pruned)


def test_trials_count_against_the_queue_cap_and_wait_for_room(
    as_user: dict[str, Client],
) -> None:
    """bob's queue cap (QUEUE_CAP) counts a sweep's trials as they are queued; the trial
    past it waits, asked but not queued, and the sweep says why."""
    bob, alice = as_user["bob"], as_user["alice"]
    n = QUEUE_CAP + 2
    # The one worker trains something else meanwhile: nothing of bob's leaves the queue (a
    # free worker would take a trial and pack its queued siblings, making room).
    blocker = alice.submit(LONG)
    wait_for(lambda: alice.get(blocker.id).status is JobStatus.RUNNING, 120, "blocker running")
    sweep = bob.submit_sweep(
        {
            "base": LONG,
            "space": {"seed": {"type": "int", "low": 0, "high": 1000}},
            "n_trials": n,
            "sampler": "random",
            "parallel": n,
        }
    )
    queued = [t for t in sweep.trials if t.job_id]
    assert len(queued) == QUEUE_CAP
    assert sweep.waiting is not None and "queued jobs" in sweep.waiting, sweep
    assert sweep.counts.get("waiting") == 1 and sweep.asked == len(queued) + 1
    cancelled = bob.cancel_sweep(sweep.id)
    done = finished(bob, cancelled.id, timeout=120)
    assert done.status == "cancelled" and done.waiting is None
    assert set(done.counts) <= {"cancelled", "failed"}, done.counts
    assert [t.reason for t in done.trials if not t.job_id] == [
        "the sweep was cancelled before it was queued"
    ]
    alice.cancel(blocker.id)


def test_the_reconciler_advances_a_sweep_nobody_reads(client: Client) -> None:
    """parallel 1: the second trial is queued only once the first is told, and no GET of the
    sweep runs the driver here: the reconciler's pass does (every RECONCILE_INTERVAL_S)."""
    sweep = client.submit_sweep(
        {
            "base": {**TINY, "max_steps": 2},
            "space": {"seed": {"type": "choice", "values": [5, 6]}},
            "n_trials": 2,
            "sampler": "grid",
            "parallel": 1,
        }
    )
    assert len(sweep.trials) == 1

    def trial_jobs() -> list[Any]:
        return [j for j in client.list_jobs(50).data if j.sweep_id == sweep.id]

    wait_for(lambda: len(trial_jobs()) == 2, 120, "the second trial queued by the reconciler")
    assert sorted(j.trial for j in trial_jobs()) == [0, 1]
    listed = next(s for s in client.sweeps() if s.id == sweep.id)  # a list does not advance
    assert listed.asked == 2
    assert finished(client, sweep.id).counts == {"succeeded": 2}


def test_sweep_ids_are_checked_before_redis(http: httpx.Client) -> None:
    assert http.get("/v1/sweeps/sw-0123456789abcdef").status_code == 404
    assert http.get("/v1/sweeps/nope").status_code == 422
    assert http.post("/v1/sweeps/sw-0123456789abcdef/cancel").status_code == 404


# --- the CLI: trainyard sweep submit / show / list / cancel

TRAINYARD = str(Path(sys.executable).parent / "trainyard")


def cli(stack: Stack, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TRAINYARD_API_URL": stack.config.api_url,
        "TRAINYARD_API_TOKEN": stack.config.api_token,
        "COLUMNS": "200",
    }
    return subprocess.run(
        [TRAINYARD, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd="/"
    )


def test_cli_submits_a_yaml_sweep_and_watches_it_to_its_best_trial(
    stack: Stack, tmp_path: Path
) -> None:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        "name: cli sweep\n"
        "base: {task: classifier, max_steps: 10, log_every: 5}\n"
        "space:\n"
        "  lr: {type: choice, values: [0.001, 0.01]}\n"
        "n_trials: 2\n"
        "sampler: grid\n"
    )
    done = cli(stack, "sweep", "submit", str(spec), "--watch")
    assert done.returncode == 0, done.stdout + done.stderr
    sweep_id = done.stdout.split("submitted sweep ")[1].split(":")[0]
    assert "2 trials of classifier book_cnn, grid sampler, maximize test_accuracy" in done.stdout
    shown = cli(stack, "sweep", "show", sweep_id)
    assert shown.returncode == 0, shown.stderr
    assert f"{sweep_id}  finished  cli sweep" in shown.stdout
    assert "2 succeeded (of 2)" in shown.stdout and "*best*" in shown.stdout
    assert re.search(r"best\s+trial \d \([0-9a-f]{16}\): test_accuracy 0\.\d+", shown.stdout)
    as_json = json.loads(cli(stack, "sweep", "show", sweep_id, "--json").stdout)
    assert as_json["id"] == sweep_id and len(as_json["trials"]) == 2
    listed = cli(stack, "sweep", "list")
    assert sweep_id in listed.stdout and "2/2" in listed.stdout


def test_cli_cancels_a_sweep_and_reports_a_bad_file(stack: Stack, tmp_path: Path) -> None:
    spec = tmp_path / "sweep.json"
    spec.write_text(
        json.dumps(
            {
                "base": LONG,
                "space": {"seed": {"type": "choice", "values": [0, 1]}},
                "n_trials": 2,
                "sampler": "grid",
            }
        )
    )
    submitted = cli(stack, "sweep", "submit", str(spec))
    assert submitted.returncode == 0, submitted.stderr
    sweep_id = submitted.stdout.split("submitted sweep ")[1].split(":")[0]
    cancelled = cli(stack, "sweep", "cancel", sweep_id)
    assert cancelled.returncode == 0 and f"{sweep_id} cancelled" in cancelled.stdout
    again = cli(stack, "sweep", "cancel", sweep_id)
    assert again.returncode == 1 and "HTTP 409" in again.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {"base": TINY, "space": {"bogus": {"type": "int", "low": 0, "high": 1}}, "n_trials": 1}
        )
    )
    refused = cli(stack, "sweep", "submit", str(bad))
    assert refused.returncode == 1 and "space.bogus" in refused.stderr


def test_an_owner_past_their_running_sweeps_gets_a_429_and_nothing_is_stored(
    http: httpx.Client, redis: Any
) -> None:
    """TRAINYARD_SWEEP_MAX_RUNNING_PER_OWNER (10): dev's running set is topped up with made-up
    ids, so one more sweep is refused before anything is stored."""
    running = "trainyard:owner:dev:sweeps:running"
    fakes = [f"sw-fa{n:014x}" for n in range(10)]
    redis.sadd(running, *fakes)
    try:
        before = http.get("/v1/sweeps").json()["count"]
        body = {
            "base": TINY,
            "space": {"seed": {"type": "choice", "values": [1, 2]}},
            "n_trials": 2,
        }
        answer = http.post("/v1/sweeps", json=body, headers={"Idempotency-Key": "over-limit-1"})
        assert answer.status_code == 429, answer.text
        assert http.get("/v1/sweeps").json()["count"] == before
        assert redis.get("trainyard:idem-sweep:dev:over-limit-1") is None
    finally:
        redis.srem(running, *fakes)
