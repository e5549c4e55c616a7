"""The reference classifier: the feature network that scores GAN samples on a labelled data set
(docs/quality.md). Trained once per data set on its train split, with a fixed recipe, and cached
in the object store next to the data set with its held-out figures.

Its held-out confidence sets the scale of every quality number, so its recipe is fixed and
versioned (REFERENCE_VERSION): a new recipe is a new cache key, never a silent change."""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from shared.storage import ArtifactNotFound, ArtifactStore, DatasetKeys
from workers.trainer.data import ImageData

log = logging.getLogger(__name__)

REFERENCE_VERSION = 1
FEATURES = 128  # the penultimate layer: what the Fréchet distance compares
WORK_SIDE = 32  # images larger than this are scored at 32x32 (antialiased); smaller as they are
CONFIDENT = 0.9  # "named with confidence": top softmax probability >= 0.9
# The recipe (settled on mnist-5k: docs/quality.md): Adam with a one-cycle schedule, random
# shifts of up to 2 pixels, a fixed step budget so a large data set costs no more than a small one.
STEPS = 600
BATCH = 128
LR = 3e-3
SHIFT = 2 / 28  # of the image side
SEED = 0
OUTLIER_SHARE = 4  # a batch of 128 real images gets 32 outliers
OUTLIER_WEIGHT = 0.5


class ReferenceNet(nn.Module):
    """A small CNN for (N, C, H, W) images in [0, 1] of any side. forward -> (N, K) logits;
    features -> (N, 128), the penultimate layer."""

    def __init__(self, channels: int, num_classes: int, side: int = WORK_SIDE) -> None:
        super().__init__()
        # `side`: the side it is trained and scores at (its data set's, at most WORK_SIDE).
        self.channels, self.num_classes, self.side = channels, num_classes, side

        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(3),  # (N, 64, 3, 3) whatever the side
            nn.Flatten(),
            nn.Linear(64 * 9, FEATURES),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(FEATURES, num_classes))

    def adapt(self, x: Tensor) -> Tensor:
        """Bring images of a job's shape (a resize, grey -> RGB) to the ones this net was
        trained on: its channels, `side` x `side`."""
        if x.shape[1] != self.channels:
            x = x.mean(1, keepdim=True) if self.channels == 1 else x.expand(-1, 3, -1, -1)
        if tuple(x.shape[2:]) != (self.side, self.side):
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear", antialias=True)
        return x

    def features(self, x: Tensor) -> Tensor:
        return self.body(self.adapt(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class FeatureHead(nn.Module):
    """The reference net's penultimate layer as torchmetrics' custom FID feature extractor:
    (N, C, H, W) floats in [0, 1] -> (N, 128)."""

    num_features = FEATURES

    def __init__(self, net: ReferenceNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.features(x)


@dataclass
class Reference:
    """A trained reference classifier and its held-out figures on the data set's test split."""

    net: ReferenceNet
    test_accuracy: float
    confident_real: float  # share of real test images it names with p >= CONFIDENT
    train_s: float  # the one-off training time, seconds

    def to(self, device: torch.device) -> Reference:
        self.net.to(device).eval()
        return self

    @torch.no_grad()
    def probabilities(self, x: Tensor, batch: int = 500) -> Tensor:
        """(N, K) softmax probabilities for images in [0, 1], in eval mode."""
        self.net.eval()
        parts = [F.softmax(self.net(x[i : i + batch]), 1) for i in range(0, len(x), batch)]
        return torch.cat(parts)


def _shift(x: Tensor, gen: torch.Generator) -> Tensor:
    """Each image moved by its own random offset of up to SHIFT of its side (zeros fill)."""
    n = len(x)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = (torch.rand(n, 2, generator=gen) * 2 - 1) * SHIFT * 2  # grid units: side = 2
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def _outliers(n: int, shape: torch.Size, gen: torch.Generator) -> Tensor:
    """n images that are no class: pixel noise and smooth blobs (upsampled noise), each at a
    random contrast. Trained towards uniform predictions (outlier exposure), they teach the
    classifier not to name noise and blobs with confidence, which an early GAN draws."""
    c, h, w = shape
    noise = torch.rand(n, c, h, w, generator=gen)
    coarse = torch.randn(n, c, 4, 4, generator=gen)
    blobs = torch.sigmoid(3 * F.interpolate(coarse, size=(h, w), mode="bilinear"))
    pick = (torch.rand(n, 1, 1, 1, generator=gen) < 0.5).float()
    contrast = torch.rand(n, 1, 1, 1, generator=gen)
    return (pick * noise + (1 - pick) * blobs) * contrast


def train_reference(data: ImageData, device: torch.device | None = None) -> Reference:
    """Train the reference classifier on `data`'s train split with the fixed recipe; scores it
    on the test split. Raises ValueError for a data set without labels. Seeded, and it leaves
    the caller's global RNG as it found it."""
    if data.num_classes < 2:
        raise ValueError(f"{data.name} has no labels: no reference classifier")
    device = device or torch.device("cpu")
    started = time.perf_counter()
    gen = torch.Generator().manual_seed(SEED)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # dropout draws from the global RNG
        torch.manual_seed(SEED)
        side = min(max(data.train_x.shape[2:]), WORK_SIDE)
        net = ReferenceNet(data.train_x.shape[1], data.num_classes, side).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=LR)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=STEPS)
        x_all, y_all = data.train_x.to(device), data.train_y.to(device)
        net.train()
        for _ in range(STEPS):
            idx = torch.randint(len(x_all), (min(BATCH, len(x_all)),), generator=gen)
            idx = idx.to(device)
            x = _shift(x_all[idx].float().div(255), gen)
            outliers = _outliers(len(x) // OUTLIER_SHARE, x.shape[1:], gen).to(device)
            logits = net(torch.cat([x, outliers]))
            loss = F.cross_entropy(logits[: len(x)], y_all[idx])
            # Outlier exposure: uniform predictions on images that are no class at all.
            loss = loss - OUTLIER_WEIGHT * F.log_softmax(logits[len(x) :], 1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
    reference = Reference(net.eval(), 0.0, 0.0, time.perf_counter() - started)
    probs = reference.probabilities(data.test_x.to(device).float().div(255))
    test_y = data.test_y.to(device)
    reference.test_accuracy = (probs.argmax(1) == test_y).float().mean().item()
    reference.confident_real = (probs.max(1).values >= CONFIDENT).float().mean().item()
    return reference


def reference_key(dataset: str) -> str:
    """Object key of a data set's cached reference classifier (beside the data set)."""
    keys = DatasetKeys(dataset) if dataset.startswith("ds-") else DatasetKeys.builtin(dataset)
    return keys.file(f"reference/classifier-v{REFERENCE_VERSION}.pt")


def save(reference: Reference, store: ArtifactStore, dataset: str) -> None:
    state = {
        "version": REFERENCE_VERSION,
        "channels": reference.net.channels,
        "num_classes": reference.net.num_classes,
        "side": reference.net.side,
        "state_dict": {k: v.cpu() for k, v in reference.net.state_dict().items()},
        "test_accuracy": reference.test_accuracy,
        "confident_real": reference.confident_real,
        "train_s": reference.train_s,
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    store.put_bytes(reference_key(dataset), buf.getvalue())


def load(store: ArtifactStore, dataset: str) -> Reference | None:
    """The cached reference classifier of `dataset`, or None if there is none yet or the cached
    file cannot be read as this version's (it is then trained and written again)."""
    try:
        raw = store.get_bytes(reference_key(dataset))
    except ArtifactNotFound:
        return None
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        net = ReferenceNet(int(state["channels"]), int(state["num_classes"]), int(state["side"]))
        net.load_state_dict(state["state_dict"])
        return Reference(
            net.eval(),
            float(state["test_accuracy"]),
            float(state["confident_real"]),
            float(state["train_s"]),
        )
    except Exception as exc:  # truncated, foreign or older-format file: train it again
        log.warning("the cached reference of %s is unreadable (%s); retraining it", dataset, exc)
        return None


# References this process has loaded, by data set: a worker reads each from the store once.
_loaded: dict[str, Reference] = {}


def load_or_train(data: ImageData, store: ArtifactStore, device: torch.device) -> Reference:
    """The cached reference of `data`, trained and cached first if it is missing. Two workers
    that miss at once both train it: the recipe is seeded, so they write the same weights."""
    if data.name in _loaded:
        return _loaded[data.name].to(device)
    found = load(store, data.name)
    if found is None:
        log.info("training the reference classifier for %s", data.name)
        found = train_reference(data, device)
        save(found, store, data.name)
        log.info(
            "reference classifier for %s: accuracy %.4f, confident %.3f, %.1f s",
            data.name,
            found.test_accuracy,
            found.confident_real,
            found.train_s,
        )
    _loaded[data.name] = found
    return found.to(device)


def entropy(counts: Tensor) -> float:
    """Entropy in nats of the distribution given by `counts` (ln K at best, 0 for one class)."""
    p = counts.float() / counts.sum().clamp(min=1)
    return float(-(p * p.clamp(min=1e-12).log()).sum()) + 0.0  # never -0.0
