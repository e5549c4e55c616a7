"""Stored job records are read as stored: a spec that today's checks would refuse (stored
before they were tightened) does not make every list and page holding its job a 500."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from shared.schemas import ClassifierSpec, JobPublic, JobSpecAdapter
from shared.state.records import decode


def stored(spec: dict[str, object]) -> dict[bytes, bytes]:
    """An HGETALL reply for a succeeded job with `spec`, as Redis gives it (bytes)."""
    fields = {
        "id": "0123456789abcdef",
        "owner": "alice",
        "status": "succeeded",
        "spec": json.dumps(spec),
        "created_at": "2026-11-30T05:22:00+00:00",
    }
    return {k.encode(): v.encode() for k, v in fields.items()}


def test_a_spec_refused_today_is_read_as_stored() -> None:
    spec = {**ClassifierSpec().model_dump(mode="json"), "name": "\x00\u202e"}
    with pytest.raises(ValidationError):
        JobSpecAdapter.validate_python(spec)  # what the front door says today
    record = decode(stored(spec))
    assert isinstance(record.spec, ClassifierSpec) and record.spec.name == "\x00\u202e"
    public = json.loads(JobPublic.from_record(record).model_dump_json())
    assert public["spec"]["name"] == "\x00\u202e" and public["id"] == "0123456789abcdef"


def test_a_valid_spec_is_validated_as_ever() -> None:
    record = decode(stored({**ClassifierSpec().model_dump(mode="json"), "name": "ok"}))
    assert record.spec == ClassifierSpec(name="ok")
