"""The model zoo: small nn.Modules that read like the book's layer lists, selected by name.

The book is Make Your First GAN With PyTorch (Tariq Rashid); docs/book.md lists its models.

What each model needs from its data (shape, classes) is in shared/zoo.py, so the API can check
a spec without importing torch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from workers.trainer.models.classifiers import BookCNN, BookMLP
from workers.trainer.models.gans import (
    Activation,
    BookCganDiscriminator,
    BookCganGenerator,
    BookConvDiscriminator,
    BookConvGenerator,
    BookMLPDiscriminator,
    BookMLPGenerator,
    ConvDiscriminator,
    ConvGenerator,
    SelfConditionedGenerator,
)

CLASSIFIERS: dict[str, type[nn.Module]] = {"book_cnn": BookCNN, "book_mlp": BookMLP}


def build_model(name: str) -> nn.Module:
    """A fresh classifier from the zoo."""
    try:
        return CLASSIFIERS[name]()
    except KeyError:
        raise ValueError(f"unknown classifier {name!r}; known: {', '.join(CLASSIFIERS)}") from None


def build_gan(
    name: str,
    image: tuple[int, int, int],
    num_classes: int = 0,
    activation: Activation = "leaky_relu",
    spectral_norm: bool = False,
    clusters: int = 0,
) -> tuple[nn.Module, nn.Module]:
    """(discriminator, generator) for `name`; conv_gan/conv_cgan are sized to `image` (C, H, W).
    `spectral_norm` (conv_gan/conv_cgan only): spectral norm in D instead of BatchNorm.
    `clusters` (conv_gan only, K > 0): self-conditioned on K clusters of the train images, a
    SelfConditionedGenerator and a projection discriminator."""
    channels, size, _ = image
    if name == "book_conv_gan":
        return BookConvDiscriminator(activation), BookConvGenerator(activation)
    if name == "book_mlp_gan":
        return BookMLPDiscriminator(), BookMLPGenerator()
    if name == "book_cgan":
        return BookCganDiscriminator(), BookCganGenerator()
    if name == "conv_gan" and clusters:
        return (
            ConvDiscriminator(channels, size, 0, spectral_norm, projection=clusters),
            SelfConditionedGenerator(channels, size, clusters),
        )
    if name == "conv_gan":
        return ConvDiscriminator(channels, size, 0, spectral_norm), ConvGenerator(channels, size)
    if name == "conv_cgan":
        return (
            ConvDiscriminator(channels, size, num_classes, spectral_norm),
            ConvGenerator(channels, size, num_classes),
        )
    raise ValueError(f"unknown GAN {name!r}")


def generator_from_export(saved: Mapping[str, Any]) -> nn.Module:
    """The sampling generator of a GAN's final/model.pt or final/best.pt (a dict loaded with
    torch.load(weights_only=True)), with its weights, in eval mode. Raises KeyError or
    RuntimeError for a file that is not a GAN export of this version."""
    spec = saved["spec"]
    image = tuple(saved.get("image") or (1, 28, 28))
    _, generator = build_gan(
        saved["model_name"],
        (int(image[0]), int(image[1]), int(image[2])),
        int(saved["num_classes"]),
        spec.get("activation", "leaky_relu"),
        clusters=int(saved.get("clusters", 0)),
    )
    generator.load_state_dict(saved["state_dict"])
    return generator.eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
