from __future__ import annotations

import pytest

from shared.status import IllegalTransition, JobStatus, can_transition, check_transition, sources_of

Q, R, S, F, C, P = (
    JobStatus.QUEUED,
    JobStatus.RUNNING,
    JobStatus.SUCCEEDED,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
    JobStatus.PRUNED,
)

LEGAL = {(Q, R), (Q, C), (Q, F), (R, Q), (R, S), (R, F), (R, C), (R, P)}


@pytest.mark.parametrize("current", list(JobStatus))
@pytest.mark.parametrize("target", list(JobStatus))
def test_transition_table(current: JobStatus, target: JobStatus) -> None:
    assert can_transition(current, target) == ((current, target) in LEGAL)
    if (current, target) in LEGAL:
        check_transition(current, target)
    else:
        with pytest.raises(IllegalTransition):
            check_transition(current, target)


@pytest.mark.parametrize("status", [S, F, C, P])
def test_terminal_states_cannot_be_left(status: JobStatus) -> None:
    assert status.is_terminal()
    assert not any(can_transition(status, t) for t in JobStatus)


def test_sources_match_table() -> None:
    assert set(sources_of(R)) == {Q}
    assert set(sources_of(C)) == {Q, R}
    assert not Q.is_terminal() and not R.is_terminal()
