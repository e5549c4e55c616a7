from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import ValidationError

from shared.schemas import ClassifierSpec, JobSpecAdapter
from shared.zoo import BUILTIN_DATASETS


@dataclass
class Case:
    name: str
    spec: dict[str, Any]
    bad_field: str | None = None  # None: the spec is valid
    expect: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case(
        "defaults",
        {"task": "classifier"},
        expect={"model": "book_cnn", "dataset": "mnist-5k", "batch_size": 128, "epochs": 10},
    ),
    Case(
        "full",
        {
            "task": "classifier",
            "model": "book_cnn",
            "dataset": "fake",
            "epochs": 2,
            "batch_size": 1,
            "lr": 0.001,
            "max_steps": 5,
            "checkpoint_every": 2,
            "sample_every": 2,
            "log_every": 1,
            "seed": 7,
            "device": "cpu",
        },
        expect={"dataset": "fake", "batch_size": 1, "seed": 7},
    ),
    Case("zero epochs", {"task": "classifier", "epochs": 0}, "epochs"),
    Case("too many epochs", {"task": "classifier", "epochs": 100_000}, "epochs"),
    Case("batch too big", {"task": "classifier", "batch_size": 1_000_000}, "batch_size"),
    Case("negative lr", {"task": "classifier", "lr": -0.1}, "lr"),
    Case("lr as text", {"task": "classifier", "lr": "fast"}, "lr"),
    Case("unknown model", {"task": "classifier", "model": "resnet50"}, "model"),
    Case("unknown data set", {"task": "classifier", "dataset": "imagenet"}, "dataset"),
    Case("unknown device", {"task": "classifier", "device": "tpu"}, "device"),
    Case("typo'd field", {"task": "classifier", "epoch": 3}, "epoch"),
    Case(
        "zero checkpoint interval",
        {"task": "classifier", "checkpoint_every": 0},
        "checkpoint_every",
    ),
    Case("unknown task", {"task": "segmentation"}, "task"),
    Case(
        "fast classifier defaults",
        {"task": "classifier"},
        expect={"mode": "fast", "batch_size": 128, "lr": 1e-2, "epochs": 10},
    ),
    Case(
        "book classifier",
        {"task": "classifier", "mode": "book"},
        expect={"batch_size": 1, "lr": 1e-3, "epochs": 3},
    ),
    Case(
        "book mode refuses batches",
        {"task": "classifier", "mode": "book", "batch_size": 64},
        "batch_size",
    ),
    Case(
        "book mode refuses another lr",
        {"task": "gan", "model": "book_conv_gan", "mode": "book", "lr": 0.1, "resize": 128},
        "lr",
    ),
    Case(
        "gan defaults",
        {"task": "gan"},
        expect={"model": "conv_gan", "batch_size": 64, "lr": 2e-3, "epochs": 30},
    ),
    Case(
        "book_conv_gan keeps DCGAN's fast lr",
        {"task": "gan", "model": "book_conv_gan", "resize": 128},
        expect={"batch_size": 64, "lr": 2e-4},
    ),
    Case("conv_cgan's fast lr", {"task": "cgan"}, expect={"model": "conv_cgan", "lr": 2e-3}),
    Case("an explicit lr wins", {"task": "gan", "lr": 5e-4}, expect={"lr": 5e-4}),
    Case(
        "book cgan",
        {"task": "cgan", "model": "book_cgan", "mode": "book"},
        expect={"batch_size": 1, "lr": 1e-4, "epochs": 12},
    ),
    Case(
        "gelu variant",
        {"task": "gan", "model": "book_conv_gan", "activation": "gelu"},
        expect={"activation": "gelu"},
    ),
    Case("gelu only for book_conv_gan", {"task": "gan", "activation": "gelu"}, "activation"),
    Case("classifier model on gan task", {"task": "gan", "model": "book_cnn"}, "model"),
    Case(
        "uploaded data set id",
        {"task": "classifier", "dataset": "ds-0123456789abcdef"},
        expect={"dataset": "ds-0123456789abcdef"},
    ),
    Case("malformed data set id", {"task": "classifier", "dataset": "ds-xyz"}, "dataset"),
    Case(
        "non-square resize",
        {"task": "gan", "model": "book_mlp_gan", "resize": [218, 178]},
        expect={"resize": (218, 178)},
    ),
    Case("resize too big", {"task": "gan", "resize": 5000}, "resize"),
    Case("no task", {"epochs": 3}, "task"),
    Case(
        "speed flags are off by default",
        {"task": "gan"},
        expect={"amp": False, "channels_last": False, "compile": False},
    ),
    Case(
        "speed flags in fast mode",
        {"task": "cgan", "amp": True, "channels_last": True, "compile": True},
        expect={"amp": True, "channels_last": True, "compile": True},
    ),
    Case("book mode refuses amp", {"task": "classifier", "mode": "book", "amp": True}, "amp"),
    Case(
        "book mode refuses channels_last",
        {"task": "gan", "mode": "book", "channels_last": True},
        "channels_last",
    ),
    Case(
        "book mode refuses compile",
        {"task": "cgan", "model": "book_cgan", "mode": "book", "compile": True},
        "compile",
    ),
    Case("amp as text", {"task": "classifier", "amp": "bf16"}, "amp"),
    # No coercion: a bool or a string is not a number, a number is not a bool.
    Case("epochs as true", {"task": "classifier", "epochs": True}, "epochs"),
    Case("epochs as numeric text", {"task": "classifier", "epochs": "3"}, "epochs"),
    Case("max_steps as true", {"task": "gan", "max_steps": True}, "max_steps"),
    Case("seed as numeric text", {"task": "cgan", "seed": "7"}, "seed"),
    Case("lr as true", {"task": "classifier", "lr": True}, "lr"),
    Case("lr as numeric text", {"task": "classifier", "lr": "0.01"}, "lr"),
    Case("crop side as true", {"task": "classifier", "crop": [True, 20]}, "crop"),
    Case("resize as numeric text", {"task": "gan", "resize": "28"}, "resize"),
    Case("amp as 1", {"task": "classifier", "amp": 1}, "amp"),
    Case("compile as text", {"task": "classifier", "compile": "true"}, "compile"),
    Case("integer lr", {"task": "classifier", "lr": 1}, expect={"lr": 1.0}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_spec_validation(case: Case) -> None:
    if case.bad_field is None:
        spec = JobSpecAdapter.validate_python(case.spec)
        for key, value in case.expect.items():
            assert getattr(spec, key) == value
        return
    with pytest.raises(ValidationError) as info:
        JobSpecAdapter.validate_python(case.spec)
    errors = info.value.errors()
    named = {str(part) for e in errors for part in e["loc"]}
    named |= {e.get("ctx", {}).get("discriminator", "").strip("'") for e in errors}
    named |= {e.get("ctx", {}).get("field", "") for e in errors}  # cross-field rules
    assert case.bad_field in named, errors


def test_spec_round_trips_through_json() -> None:
    spec = ClassifierSpec(epochs=3, batch_size=32)
    assert JobSpecAdapter.validate_json(spec.model_dump_json()) == spec


def test_strict_fields_refuse_coercion_from_json() -> None:
    """The API parses JSON: `"epochs": true` was read as 1 epoch."""
    for body in ('{"task": "classifier", "epochs": true}', '{"task": "gan", "batch_size": "8"}'):
        with pytest.raises(ValidationError):
            JobSpecAdapter.validate_json(body)


def test_cross_field_errors_name_their_field_once() -> None:
    with pytest.raises(ValidationError) as info:
        JobSpecAdapter.validate_python({"task": "classifier", "mode": "book", "batch_size": 4})
    (error,) = info.value.errors()
    assert error["ctx"]["field"] == "batch_size"
    assert error["msg"] == "book mode trains with batch size 1, as the book"


def test_dataset_pattern_is_documented() -> None:
    schema = JobSpecAdapter.json_schema()["$defs"]["ClassifierSpec"]["properties"]["dataset"]
    pattern = re.compile(schema["pattern"])
    for name in [*BUILTIN_DATASETS, "ds-0123456789abcdef"]:
        assert pattern.fullmatch(name)
    for name in ["imagenet", "ds-xyz", "ds-0123456789abcdef:x", "mnist\n"]:
        assert not pattern.fullmatch(name)


def test_the_openapi_document_has_no_tuple_form_arrays() -> None:
    """Tuples (crop/resize pairs, a data set's image shape) are documented as plain arrays
    with a fixed length: Schemathesis failed its response check on pydantic's `prefixItems`
    once a data set was answered with its shape."""
    from services.api.main import app

    found: list[str] = []

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            if "prefixItems" in node or isinstance(node.get("items"), list):
                found.append(where)
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    walk(app.openapi(), "")
    assert found == []
    image = app.openapi()["components"]["schemas"]["DatasetPublic"]["properties"]["image"]
    assert image["minItems"] == image["maxItems"] == 3 and image["items"]["type"] == "integer"


@pytest.mark.parametrize("name", ["a\x00b", "line\nbreak", "x\u202ey", "z\u200bw"])
def test_a_job_name_with_invisible_or_control_characters_is_refused(name: str) -> None:
    """The same rule as data set and class names: what people read is visible text."""
    with pytest.raises(ValidationError) as caught:
        ClassifierSpec(name=name)
    assert caught.value.errors()[0]["loc"] == ("name",)
    assert ClassifierSpec(name="résumé run 2").name == "résumé run 2"
