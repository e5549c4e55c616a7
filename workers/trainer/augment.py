"""Differentiable augmentation for GAN training on small data sets (DiffAugment: Zhao, Liu,
Lin, Zhu and Han, "Differentiable Augmentation for Data-Efficient GAN Training", NeurIPS 2020).

The same kind of random transform is applied to real and generated images every time D sees
them, in D's update and in G's; the transforms are differentiable, so G learns through them
and never learns to produce augmented images. Here: translation (shift by up to 1/8 of the
side, zero fill) and cutout (a square of half the side set to zero).

Every draw comes from the caller's torch.Generator (a training job's own, seeded from its
spec), never from the global RNG: jobs packed into one process each keep their own stream,
and a resumed job continues exactly. Each image draws its own transform: nothing is shared
across a batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

POLICIES = ("translation", "cutout")
TRANSLATION = 1 / 8  # largest shift, of the image side (DiffAugment's default)
CUTOUT = 1 / 2  # side of the cut square, of the image side (DiffAugment's default)


def diff_augment(x: Tensor, policy: Sequence[str], generator: torch.Generator) -> Tensor:
    """`x` (N, C, H, W) with each transform of `policy` applied, in order, per image."""
    for name in policy:
        if name == "translation":
            x = translate(x, generator)
        elif name == "cutout":
            x = cutout(x, generator)
        else:
            raise ValueError(f"unknown augmentation {name!r}; known: {', '.join(POLICIES)}")
    return x


def _randint(
    low: int, high: int, n: int, generator: torch.Generator, device: torch.device
) -> Tensor:
    """(n, 1, 1) integers in [low, high), drawn on the generator's device, then moved."""
    drawn = torch.randint(low, high, (n, 1, 1), generator=generator, device=generator.device)
    return drawn.to(device, non_blocking=True)


def translate(x: Tensor, generator: torch.Generator, ratio: float = TRANSLATION) -> Tensor:
    """Shift each image by its own (dy, dx), each in [-ratio * side, ratio * side]; the pixels
    shifted in are zero."""
    n, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = _randint(-sy, sy + 1, n, generator, x.device)
    dx = _randint(-sx, sx + 1, n, generator, x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + dy + sy  # (N, H, 1) in padded coords
    cols = torch.arange(w, device=x.device).view(1, 1, w) + dx + sx  # (N, 1, W)
    padded = F.pad(x, (sx, sx, sy, sy))  # (N, C, H + 2sy, W + 2sx), zero border
    wide = w + 2 * sx
    index = (rows * wide + cols).view(n, 1, h * w).expand(-1, x.shape[1], -1)
    return padded.flatten(2).gather(2, index).view_as(x)


def cutout(x: Tensor, generator: torch.Generator, ratio: float = CUTOUT) -> Tensor:
    """Zero one square of side ratio * side per image, centred anywhere in the image (it may
    run over the edge)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = _randint(0, h + (1 - ch % 2), n, generator, x.device)
    cx = _randint(0, w + (1 - cw % 2), n, generator, x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= cy - ch // 2) & (rows < cy - ch // 2 + ch)
    inside = inside & (cols >= cx - cw // 2) & (cols < cx - cw // 2 + cw)  # (N, H, W)
    return x * (~inside).unsqueeze(1).to(x.dtype)
