from __future__ import annotations

import torch
from torch import nn

from workers.trainer.models import build_model, count_parameters


def test_book_cnn_matches_book() -> None:
    model = build_model("book_cnn")
    assert count_parameters(model) == 3_720  # BOOK.md §2
    layers = [type(m) for m in model.modules() if not isinstance(m, nn.Sequential)][1:]
    assert layers == [
        nn.Conv2d,
        nn.LeakyReLU,
        nn.BatchNorm2d,
        nn.Conv2d,
        nn.LeakyReLU,
        nn.BatchNorm2d,
        nn.Flatten,
        nn.Linear,
        nn.Sigmoid,
    ]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.stride) for c in convs] == [((5, 5), (2, 2)), ((3, 3), (2, 2))]
    assert all(m.negative_slope == 0.02 for m in model.modules() if isinstance(m, nn.LeakyReLU))


def test_book_cnn_shapes() -> None:
    model = build_model("book_cnn").eval()
    out = model(torch.rand(4, 1, 28, 28))
    assert out.shape == (4, 10)
    assert ((out > 0) & (out < 1)).all()  # Sigmoid outputs for BCELoss
    assert model(torch.rand(2, 784)).shape == (2, 10)  # flat pixels are viewed as (N, 1, 28, 28)
