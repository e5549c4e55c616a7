"""GANs from Make Your First GAN With PyTorch (Tariq Rashid), ch. 3, §3.1 and §3.2 (docs/book.md),
and our convolutional GANs sized to the data set.

Every discriminator ends in Sigmoid and every generator in Sigmoid (pixels in [0, 1]): the
book trains both with BCELoss. Images are (N, C, H, W) throughout."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

LATENT = 100  # the book's seed size: randn(100)
Activation = Literal["leaky_relu", "gelu"]


def _act(kind: Activation) -> nn.Module:
    # The book's refinement notebook swaps every LeakyReLU(0.2) for GELU.
    return nn.GELU() if kind == "gelu" else nn.LeakyReLU(0.2)


# --- Ch. 3, §3.1: the convolutional CelebA GAN, 128x128 colour.


class BookConvDiscriminator(nn.Module):
    """Make Your First GAN With PyTorch, ch. 3, §3.1, the convolutional CelebA discriminator.

    ≈4.29 M parameters; (N, 3, 128, 128) -> (N, 1)."""

    def __init__(self, activation: Activation = "leaky_relu") -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 256, kernel_size=8, stride=2),  # (N, 256, 61, 61)
            nn.BatchNorm2d(256),
            _act(activation),
            nn.Conv2d(256, 256, kernel_size=8, stride=2),  # (N, 256, 27, 27)
            nn.BatchNorm2d(256),
            _act(activation),
            nn.Conv2d(256, 3, kernel_size=8, stride=2),  # (N, 3, 10, 10)
            _act(activation),
            nn.Flatten(),  # (N, 300)
            nn.Linear(300, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BookConvGenerator(nn.Module):
    """Make Your First GAN With PyTorch, ch. 3, §3.1, the convolutional CelebA generator.

    ≈4.33 M parameters; (N, 100) -> (N, 3, 128, 128)."""

    def __init__(self, activation: Activation = "leaky_relu") -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(LATENT, 3 * 11 * 11),
            _act(activation),
            nn.Unflatten(1, (3, 11, 11)),  # (N, 3, 11, 11)
            nn.ConvTranspose2d(3, 256, kernel_size=8, stride=2),  # (N, 256, 28, 28)
            nn.BatchNorm2d(256),
            _act(activation),
            nn.ConvTranspose2d(256, 256, kernel_size=8, stride=2),  # (N, 256, 62, 62)
            nn.BatchNorm2d(256),
            _act(activation),
            nn.ConvTranspose2d(256, 3, kernel_size=8, stride=2, padding=1),  # (N, 3, 128, 128)
            nn.BatchNorm2d(3),
            nn.Sigmoid(),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


# --- Ch. 3, §3.1 and §3.1.1: the fully-connected CelebA GAN baseline, full 218x178 colour.

CELEBA_HWC = (218, 178, 3)
CELEBA_PIXELS = 218 * 178 * 3  # 116,412


class BookMLPDiscriminator(nn.Module):
    """Make Your First GAN With PyTorch, ch. 3, §3.1.1, the fully-connected CelebA discriminator.

    (N, 3, 218, 178) -> (N, 1). Flattens in the book's (H, W, C) order."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),  # (N, 116412)
            nn.Linear(CELEBA_PIXELS, 100),
            nn.LeakyReLU(0.02),
            nn.LayerNorm(100),
            nn.Linear(100, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.permute(0, 2, 3, 1))  # (N, C, H, W) -> (N, H, W, C), as the book


class BookMLPGenerator(nn.Module):
    """Make Your First GAN With PyTorch, ch. 3, §3.1.1, the fully-connected CelebA generator.

    (N, 100) -> (N, 3, 218, 178). Produces (H, W, C) as the book, returned as (C, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(LATENT, 300),
            nn.LeakyReLU(0.02),
            nn.LayerNorm(300),
            nn.Linear(300, CELEBA_PIXELS),
            nn.Sigmoid(),
            nn.Unflatten(1, CELEBA_HWC),  # (N, 218, 178, 3)
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).permute(0, 3, 1, 2)


# --- Ch. 3, §3.2: the conditional MNIST GAN; the one-hot label is joined to each input.


class BookCganDiscriminator(nn.Module):
    """Make Your First GAN With PyTorch, ch. 3, §3.2, the conditional MNIST discriminator.

    (N, 1, 28, 28), (N, 10) one-hot -> (N, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(784 + 10, 200),
            nn.LeakyReLU(0.02),
            nn.LayerNorm(200),
            nn.Linear(200, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor, label: Tensor) -> Tensor:
        return self.net(torch.cat((x.reshape(-1, 784), label), dim=1))


class BookCganGenerator(nn.Module):
    """Make Your First GAN With PyTorch, ch. 3, §3.2, the conditional MNIST generator.

    (N, 100), (N, 10) one-hot -> (N, 1, 28, 28)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(LATENT + 10, 200),
            nn.LeakyReLU(0.02),
            nn.LayerNorm(200),
            nn.Linear(200, 784),
            nn.Sigmoid(),
            nn.Unflatten(1, (1, 28, 28)),
        )

    def forward(self, z: Tensor, label: Tensor) -> Tensor:
        return self.net(torch.cat((z, label), dim=1))


# --- Ours: the book's conv GAN ideas (strided convs, BatchNorm, LeakyReLU, Sigmoid + BCE)
# sized to the data set: 28x28 (two 2x steps from 7x7) or 32/64 (from 8x8).


WIDTH = 32  # channels of the first conv; doubles per 2x step (DCGAN uses 64; 32 is ample at 28px)


def _steps(size: int) -> tuple[int, int]:
    """(smallest feature map side, number of 2x up/down-sampling steps) for an image side."""
    if size == 28:
        return 7, 2
    if size in (32, 64):
        return 8, {32: 2, 64: 3}[size]
    raise ValueError(f"conv_gan supports 28, 32 or 64 pixel images, not {size}")


class ConvDiscriminator(nn.Module):
    """(N, C, S, S) [+ (N, K) one-hot, joined as K constant planes] -> (N, 1).

    `spectral_norm`: every conv and linear weight divided by its largest singular value
    (Miyato, Kataoka, Koyama and Yoshida, "Spectral Normalization for Generative Adversarial
    Networks", ICLR 2018), in place of BatchNorm, as in their SNGAN discriminator.

    `projection` (K > 0, with num_classes 0): the condition enters as a projection instead
    (Miyato and Koyama, "cGANs with Projection Discriminator", ICLR 2018): the logit gains
    <embed(label), features>, where features are the input of the last linear layer. It
    costs K x features parameters and no extra convolution, whatever K; the (N, K) one-hot
    label is then required."""

    def __init__(
        self,
        channels: int,
        size: int,
        num_classes: int = 0,
        spectral_norm: bool = False,
        projection: int = 0,
    ) -> None:
        super().__init__()
        base, steps = _steps(size)
        widths = [channels + num_classes] + [WIDTH * 2**i for i in range(steps)]
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else _same
        layers: list[nn.Module] = []
        for i in range(steps):
            layers.append(sn(nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1)))
            if i > 0 and not spectral_norm:  # no BatchNorm on the input layer (DCGAN)
                layers.append(nn.BatchNorm2d(widths[i + 1]))
            layers.append(nn.LeakyReLU(0.2))
        self.net = nn.Sequential(
            *layers,  # (N, WIDTH * 2**(steps-1), base, base)
            nn.Flatten(),
            sn(nn.Linear(widths[-1] * base * base, 1)),
            nn.Sigmoid(),
        )
        self.num_classes = num_classes
        self.embed = nn.Embedding(projection, widths[-1] * base * base) if projection else None

    def forward(self, x: Tensor, label: Tensor | None = None) -> Tensor:
        if self.num_classes:
            assert label is not None
            planes = label[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
            x = torch.cat((x, planes), dim=1)
        if self.embed is None:
            return self.net(x)
        assert label is not None
        features = self.net[:-2](x)  # (N, F): everything before the last Linear
        logit = self.net[-2](features) + ((label @ self.embed.weight) * features).sum(1, True)
        return self.net[-1](logit)


def _same(module: nn.Module) -> nn.Module:
    return module


class ConvGenerator(nn.Module):
    """(N, 100) [+ (N, K) one-hot] -> (N, C, S, S)."""

    def __init__(self, channels: int, size: int, num_classes: int = 0) -> None:
        super().__init__()
        base, steps = _steps(size)
        widths = [WIDTH * 2**i for i in reversed(range(steps))] + [channels]
        layers: list[nn.Module] = [
            nn.Linear(LATENT + num_classes, widths[0] * base * base),
            nn.Unflatten(1, (widths[0], base, base)),  # (N, W0, base, base)
            nn.BatchNorm2d(widths[0]),  # 2d, not 1d: works at the book's batch size of 1
            nn.ReLU(),
        ]
        for i in range(steps):
            last = i == steps - 1
            layers.append(nn.ConvTranspose2d(widths[i], widths[i + 1], 4, stride=2, padding=1))
            layers += [nn.Sigmoid()] if last else [nn.BatchNorm2d(widths[i + 1]), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.num_classes = num_classes

    def forward(self, z: Tensor, label: Tensor | None = None) -> Tensor:
        if self.num_classes:
            assert label is not None
            z = torch.cat((z, label), dim=1)
        return self.net(z)


class SelfConditionedGenerator(nn.Module):
    """(N, 100) -> (N, C, S, S): an unconditional generator made of a conditional one.

    The condition is one of K clusters of the train images (workers/trainer/clusters.py,
    after Liu et al., "Diverse Image Generation via Self-Conditioned GANs", CVPR 2020), read
    from the seed itself: the normal CDF of z[:, 0] is uniform on (0, 1), and the cluster is
    the one whose share of the prior's cumulative sum it falls in. So z ~ N(0, I) draws
    clusters as often as the train split holds them, and G(z) stays a function of z alone,
    sampled like any other generator. `cumulative` (K,) is a buffer set from the prior by
    the recipe and saved with the weights."""

    cumulative: Tensor

    def __init__(self, channels: int, size: int, clusters: int) -> None:
        super().__init__()
        self.net = ConvGenerator(channels, size, clusters)
        self.clusters = clusters
        self.register_buffer("cumulative", torch.arange(1, clusters + 1) / clusters)

    def set_prior(self, prior: Tensor) -> None:
        """prior: (K,) non-negative shares of the clusters (normalised here)."""
        with torch.no_grad():
            self.cumulative.copy_(prior.to(self.cumulative).cumsum(0) / prior.sum())

    def cluster_of(self, z: Tensor) -> Tensor:
        """(N, 100) seeds -> (N,) cluster indices (int64)."""
        u = torch.special.ndtr(z[:, 0].contiguous())
        return torch.searchsorted(self.cumulative, u, right=True).clamp(max=self.clusters - 1)

    def one_hot(self, z: Tensor) -> Tensor:
        """(N, 100) seeds -> (N, K) one-hot clusters (float), D's condition for G(z)."""
        return nn.functional.one_hot(self.cluster_of(z), self.clusters).to(z.dtype)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z, self.one_hot(z))
