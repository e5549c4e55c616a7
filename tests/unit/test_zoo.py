"""Model/data fit checks the API runs before queueing (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from shared.zoo import BUILTIN_DATASETS, MODELS, DatasetInfo, fit_problem

MNIST = BUILTIN_DATASETS["mnist-5k"]
COLOUR32 = DatasetInfo("ds-colour32", (3, 32, 32), 10, 90, 10, "upload")
CELEBA = DatasetInfo("ds-celeba", (3, 218, 178), 0, 900, 100, "upload")
UNLABELLED = DatasetInfo("ds-faces", (1, 28, 28), 0, 90, 10, "upload")
MANY = DatasetInfo("ds-many", (1, 28, 28), 20, 90, 10, "upload")


@dataclass
class Case:
    model: str
    data: DatasetInfo
    crop: tuple[int, int] | None = None
    resize: tuple[int, int] | None = None
    field: str | None = None  # None: fits
    says: str = ""


CASES = [
    Case("book_cnn", MNIST),
    Case("book_mlp", MNIST),
    Case("book_cnn", COLOUR32, field="model", says="1-channel"),
    Case("book_conv_gan", MNIST, field="resize", says="set resize: 128"),
    Case("book_conv_gan", MNIST, resize=(128, 128)),
    Case("book_conv_gan", CELEBA, crop=(128, 128)),  # the book's own preprocessing
    Case("book_conv_gan", CELEBA, field="resize", says="3x218x178"),
    Case("book_mlp_gan", CELEBA),
    Case("book_mlp_gan", MNIST, field="resize", says="resize: [218, 178]"),
    Case("book_mlp_gan", MNIST, resize=(218, 178)),
    Case("conv_gan", MNIST),
    Case("conv_gan", COLOUR32),
    Case("conv_gan", CELEBA, crop=(178, 178), resize=(64, 64)),
    Case("conv_gan", CELEBA, field="resize", says="28, 32, 64"),
    Case("conv_gan", MNIST, resize=(40, 40), field="resize"),
    Case("conv_gan", UNLABELLED),  # GANs need no labels
    Case("book_cgan", MNIST),
    Case("book_cgan", UNLABELLED, field="dataset", says="labelled"),
    Case("book_cgan", MANY, field="dataset", says="20 classes"),
    Case("conv_cgan", MANY),
    Case("conv_cgan", COLOUR32),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.model}-{c.data.name}-{c.field}")
def test_fit(case: Case) -> None:
    problem = fit_problem(MODELS[case.model], case.data, case.crop, case.resize)
    if case.field is None:
        assert problem is None
    else:
        assert problem is not None and problem[0] == case.field and case.says in problem[1], problem


def test_every_model_has_a_task_and_a_book_recipe() -> None:
    assert {m.task for m in MODELS.values()} == {"classifier", "gan", "cgan"}
    assert MODELS["book_cnn"].book_lr == 1e-3 and MODELS["book_cgan"].book_epochs == 12
