"""The model zoo: small nn.Modules that read like BOOK.md's layer lists, selected by name."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from workers.trainer.models.classifiers import BookCNN

MODELS: dict[str, Callable[[], nn.Module]] = {
    "book_cnn": BookCNN,
}


def build_model(name: str) -> nn.Module:
    """A fresh, randomly initialised model from the zoo."""
    try:
        return MODELS[name]()
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
