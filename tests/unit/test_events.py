"""A restarted job's event history: the rewind a resume writes and the KeptHistory that keeps
each step once (shared/state/events.py). Streams with real Redis: tests/integration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.schemas import ClassifierSpec, EventKind, JobEvent
from shared.state.events import KeptHistory
from shared.storage import LocalArtifactStore
from workers.trainer.fit import fit
from workers.trainer.run import JobStopped, LocalRun, StopReason

SPEC = ClassifierSpec(
    dataset="fake",
    epochs=2,
    batch_size=64,
    checkpoint_every=5,
    sample_every=4,
    log_every=1,
    device="cpu",
)  # 8 steps per epoch, 16 in all


def ev(kind: EventKind, step: int, attempt: int, n: int, **info: Any) -> JobEvent:
    return JobEvent(id=f"{n}-0", kind=kind, time=0.0, step=step, attempt=attempt, info=info)


def kept_steps(events: list[JobEvent], kind: str = "step") -> list[tuple[int, int]]:
    return [(e.step, e.attempt) for e in KeptHistory().keep(events) if e.kind == kind]


def crash_at_15() -> list[JobEvent]:
    """Attempt 1 logs steps 1-15 (checkpoint 10, grids 5, 10, 15) and dies; attempt 2 resumes
    from 10 and runs to 20."""
    events: list[JobEvent] = []

    def add(kind: EventKind, step: int, attempt: int, **info: Any) -> None:
        events.append(ev(kind, step, attempt, len(events) + 1, **info))

    add("status", 0, 1, status="running")
    for step in range(1, 16):
        add("step", step, 1)
        if step == 10:
            add("checkpoint", 10, 1)
        if step % 5 == 0:
            add("sample", step, 1)
    add("status", 0, 1, status="queued", reason="reconciler: lost")
    add("status", 0, 2, status="running")
    add("rewind", 10, 2)
    add("log", 10, 2, resumed_from=10)
    for step in range(11, 21):
        add("step", step, 2)
        if step % 5 == 0:
            add("sample", step, 2)
    add("checkpoint", 20, 2)
    return events


def test_a_rewind_keeps_each_step_once_from_the_attempt_that_went_on() -> None:
    events = crash_at_15()
    assert [s for s, _ in kept_steps(events)].count(15) == 1  # twice in the stream
    assert kept_steps(events) == [(s, 1) for s in range(1, 11)] + [(s, 2) for s in range(11, 21)]
    assert kept_steps(events, "sample") == [(5, 1), (10, 1), (15, 2), (20, 2)]
    kept = KeptHistory().keep(events)
    # The story of the attempts stays: both starts, the loss, and the rewind itself.
    assert [e.info.get("status") for e in kept if e.kind == "status"] == [
        "running",
        "queued",
        "running",
    ]
    assert [(e.step, e.attempt) for e in kept if e.kind == "rewind"] == [(10, 2)]


def test_a_window_after_an_id_holds_the_rewind_and_no_superseded_event() -> None:
    events = crash_at_15()
    cut = next(i for i, e in enumerate(events) if e.kind == "step" and e.step == 13)
    window = KeptHistory().keep(events[cut:])  # a reader that had events up to step 12
    assert [e.kind for e in window].count("rewind") == 1
    assert [(e.step, e.attempt) for e in window if e.kind == "step"] == [
        (s, 2) for s in range(11, 21)
    ]


def test_a_late_write_of_the_replaced_attempt_is_dropped() -> None:
    events = crash_at_15()
    rewind = next(i for i, e in enumerate(events) if e.kind == "rewind")
    late = ev("step", 16, 1, 999)  # the old worker, after its successor's rewind
    events.insert(rewind + 2, late)
    assert (16, 1) not in kept_steps(events)
    follower = KeptHistory()
    assert [follower.live(e) for e in events[rewind : rewind + 3]] == [True, True, False]


def test_of_two_events_of_one_kind_at_one_step_the_newer_wins() -> None:
    # Restarted after its last checkpoint (step 20 = the end): the new attempt writes the
    # final grid and memory event again.
    events = [
        ev("step", 20, 1, 1),
        ev("sample", 20, 1, 2),
        ev("memory", 20, 1, 3),
        ev("rewind", 20, 2, 4),
        ev("sample", 20, 2, 5),
        ev("memory", 20, 2, 6),
    ]
    kept = KeptHistory().keep(events)
    assert [(e.kind, e.attempt) for e in kept] == [
        ("step", 1),
        ("rewind", 2),
        ("sample", 2),
        ("memory", 2),
    ]


class DiesAt(LocalRun):
    """A run that stops for good at `step`: its events stay, like those of a killed worker."""

    def __init__(self, store: LocalArtifactStore, events: list[JobEvent], step: int) -> None:
        super().__init__("j", store)
        self.events, self.sink, self.at = events, events.extend, step
        self.reason: StopReason = "lease_lost"

    def should_stop(self, step: int) -> bool:
        if step >= self.at:
            self.drain()  # its checkpoint and events are out
            self.stop_reason = self.reason
        return super().should_stop(step)


def test_fit_resuming_writes_a_rewind_and_stamps_every_event(tmp_path: Path) -> None:
    stream: list[JobEvent] = []
    store = LocalArtifactStore(tmp_path)
    crashed = DiesAt(store, stream, 12)  # the last checkpoint is step 10
    with pytest.raises(JobStopped):
        fit(SPEC, crashed)
    crashed.uploader.thread.join(timeout=60)
    resumed = LocalRun("j", store)
    resumed.events, resumed.sink, resumed.attempt = stream, stream.extend, 2
    fit(SPEC, resumed)

    assert {e.attempt for e in stream} == {1, 2}
    first_of_2 = next(e for e in stream if e.attempt == 2)
    assert (first_of_2.kind, first_of_2.step) == ("rewind", 10)
    assert [e.step for e in stream if e.kind == "step"].count(11) == 2  # 11 and 12 repeated
    assert kept_steps(stream) == [(s, 1) for s in range(1, 11)] + [(s, 2) for s in range(11, 17)]
    assert kept_steps(stream, "sample") == [(4, 1), (8, 1), (12, 2), (16, 2)]
    # The first start writes no rewind: there is nothing to supersede.
    assert not any(e.kind == "rewind" and e.attempt == 1 for e in stream)


def test_a_step_that_ends_an_interval_and_the_run_writes_its_grid_once(tmp_path: Path) -> None:
    """16 steps, a grid every 4: the loop's grid at step 16 is also the end's. Written twice,
    the live stream had two sample events at step 16 and the kept history one, so a live
    client counted one event more than /metrics gave (a flaky browser test)."""
    stream: list[JobEvent] = []
    run = LocalRun("j", LocalArtifactStore(tmp_path))
    run.events, run.sink = stream, stream.extend
    fit(SPEC, run)
    assert [e.step for e in stream if e.kind == "sample"] == [4, 8, 12, 16]
    assert len(KeptHistory().keep(stream)) == len(stream)  # nothing to drop in one attempt
