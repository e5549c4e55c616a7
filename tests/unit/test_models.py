"""Fidelity to the book (docs/book.md): parameter counts, layer lists and every intermediate
shape."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workers.trainer.models import build_gan, build_model, count_parameters
from workers.trainer.models.gans import (
    BookCganDiscriminator,
    BookCganGenerator,
    BookConvDiscriminator,
    BookConvGenerator,
    BookMLPDiscriminator,
    BookMLPGenerator,
    ConvDiscriminator,
    ConvGenerator,
)


def layer_types(model: nn.Module) -> list[type[nn.Module]]:
    return [type(m) for m in model.modules() if not list(m.children())]


def shapes_after(
    model: nn.Module, kinds: tuple[type[nn.Module], ...], *inputs: torch.Tensor
) -> list[tuple[int, ...]]:
    """Output shapes of every layer of the given kinds, in call order."""
    seen: list[tuple[int, ...]] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape)))
        for m in model.modules()
        if isinstance(m, kinds)
    ]
    model(*inputs)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize(("name", "params"), [("book_cnn", 3_720), ("book_mlp", 159_410)])
def test_classifier_parameter_counts(name: str, params: int) -> None:
    assert count_parameters(build_model(name)) == params


def test_book_cnn_layers_and_shapes() -> None:
    model = build_model("book_cnn").eval()
    assert layer_types(model) == [
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
    x = torch.rand(4, 1, 28, 28)
    assert shapes_after(model, (nn.Conv2d, nn.Flatten), x) == [
        (4, 10, 12, 12),
        (4, 10, 5, 5),
        (4, 250),
    ]
    assert all(m.negative_slope == 0.02 for m in model.modules() if isinstance(m, nn.LeakyReLU))
    out = model(x)
    assert out.shape == (4, 10) and ((out > 0) & (out < 1)).all()
    assert model(torch.rand(2, 784)).shape == (2, 10)  # flat pixels are viewed as (N, 1, 28, 28)


def test_book_mlp_layers() -> None:
    model = build_model("book_mlp")
    assert layer_types(model) == [nn.Linear, nn.LeakyReLU, nn.LayerNorm, nn.Linear, nn.Sigmoid]
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_book_conv_gan_discriminator() -> None:
    D = BookConvDiscriminator()
    assert count_parameters(D) == 4_294_448  # ≈4.29 M
    assert layer_types(D) == [
        nn.Conv2d,
        nn.BatchNorm2d,
        nn.LeakyReLU,
        nn.Conv2d,
        nn.BatchNorm2d,
        nn.LeakyReLU,
        nn.Conv2d,
        nn.LeakyReLU,
        nn.Flatten,
        nn.Linear,
        nn.Sigmoid,
    ]
    x = torch.rand(1, 3, 128, 128)
    assert shapes_after(D, (nn.Conv2d, nn.Flatten), x) == [
        (1, 256, 61, 61),
        (1, 256, 27, 27),
        (1, 3, 10, 10),
        (1, 300),
    ]  # 128 -> 61 -> 27 -> 10
    assert all(
        m.kernel_size == (8, 8) and m.stride == (2, 2)
        for m in D.modules()
        if isinstance(m, nn.Conv2d)
    )
    assert all(m.negative_slope == 0.2 for m in D.modules() if isinstance(m, nn.LeakyReLU))
    assert D(x).shape == (1, 1)


def test_book_conv_gan_generator() -> None:
    G = BookConvGenerator()
    assert count_parameters(G) == 4_330_816  # ≈4.33 M
    z = torch.randn(1, 100)
    assert shapes_after(G, (nn.Linear, nn.Unflatten, nn.ConvTranspose2d), z) == [
        (1, 363),
        (1, 3, 11, 11),
        (1, 256, 28, 28),
        (1, 256, 62, 62),
        (1, 3, 128, 128),
    ]
    convs = [m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [c.padding for c in convs] == [(0, 0), (0, 0), (1, 1)]
    assert layer_types(G)[-2:] == [nn.BatchNorm2d, nn.Sigmoid]
    out = G(z)
    assert ((out >= 0) & (out <= 1)).all()


def test_gelu_variant_swaps_every_leaky_relu() -> None:
    for model in (BookConvDiscriminator("gelu"), BookConvGenerator("gelu")):
        types = layer_types(model)
        assert nn.LeakyReLU not in types and types.count(nn.GELU) >= 3
    assert count_parameters(BookConvDiscriminator("gelu")) == 4_294_448


def test_book_mlp_gan() -> None:
    D, G = BookMLPDiscriminator(), BookMLPGenerator()
    assert layer_types(D) == [
        nn.Flatten,
        nn.Linear,
        nn.LeakyReLU,
        nn.LayerNorm,
        nn.Linear,
        nn.Sigmoid,
    ]
    assert D.net[1].in_features == 116_412
    assert G.net[3].out_features == 116_412
    assert count_parameters(D) == 116_412 * 100 + 100 + 200 + 101
    images = G(torch.randn(2, 100))
    assert images.shape == (2, 3, 218, 178)
    assert D(images).shape == (2, 1)
    # the book's (H, W, C) pixel order: G's unit k is pixel (h, w, c) with k = (h * 178 + w) * 3 + c
    z = torch.randn(1, 100)
    flat = G.net[:5](z)  # the Sigmoid's (1, 116412) output, before the view
    assert torch.equal(G(z).permute(0, 2, 3, 1).reshape(1, -1), flat)


def test_book_cgan_joins_the_label() -> None:
    D, G = BookCganDiscriminator(), BookCganGenerator()
    assert D.net[0].in_features == 784 + 10 and G.net[0].in_features == 100 + 10
    assert layer_types(D) == [nn.Linear, nn.LeakyReLU, nn.LayerNorm, nn.Linear, nn.Sigmoid]
    assert layer_types(G)[:5] == [nn.Linear, nn.LeakyReLU, nn.LayerNorm, nn.Linear, nn.Sigmoid]
    labels = torch.eye(10)[[3, 7]]
    images = G(torch.randn(2, 100), labels)
    assert images.shape == (2, 1, 28, 28)
    assert D(images, labels).shape == (2, 1)
    # the label changes the output: it is really an input
    z = torch.randn(1, 100)
    assert not torch.equal(G(z, torch.eye(10)[[0]]), G(z, torch.eye(10)[[1]]))


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 28), (1, 32), (3, 32), (3, 64)])
@pytest.mark.parametrize("classes", [0, 10])
def test_conv_gans_are_sized_to_the_data(channels: int, size: int, classes: int) -> None:
    name = "conv_cgan" if classes else "conv_gan"
    D, G = build_gan(name, (channels, size, size), classes)
    label = torch.eye(10)[[1, 2]] if classes else None
    images = G(torch.randn(2, 100), label)
    assert images.shape == (2, channels, size, size)
    assert D(images, label).shape == (2, 1)
    assert isinstance(D, ConvDiscriminator) and isinstance(G, ConvGenerator)


def test_conv_gan_refuses_other_sizes() -> None:
    with pytest.raises(ValueError, match="28, 32 or 64"):
        build_gan("conv_gan", (1, 40, 40))
