"""The API's inference counter (services/api/inference._counted) sorts every refusal as
`refused`, including the 400 Starlette raises for a malformed predict form (two `file` parts,
a broken multipart body): a caller's mistake is never counted as a failure of the service."""

from __future__ import annotations

import pytest
from starlette.exceptions import HTTPException

from services.api.errors import ApiProblem
from services.api.inference import _counted
from services.api.metrics import INFERENCE_REQUESTS
from tests.conftest import run_async


def _count(outcome: str) -> float:
    return INFERENCE_REQUESTS.labels("predict", outcome)._value.get()


async def _raise(exc: Exception) -> None:
    raise exc


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (HTTPException(400, "Too many files. Maximum number of files is 1."), "refused"),
        (ApiProblem(422, "file: one file is required", "file"), "refused"),
        (ApiProblem(504, "no inference worker answered"), "timed_out"),
        (RuntimeError("a bug"), "failed"),
    ],
)
def test_each_error_is_counted_by_its_status(exc: Exception, outcome: str) -> None:
    before = {o: _count(o) for o in ("refused", "failed", "timed_out")}
    with pytest.raises(type(exc)):
        run_async(_counted("predict", _raise(exc)))
    after = {o: _count(o) for o in before}
    assert {o: after[o] - before[o] for o in before} == {
        o: (1.0 if o == outcome else 0.0) for o in before
    }
