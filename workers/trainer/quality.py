"""Sample quality of a GAN during training (docs/quality.md).

A labelled data set is scored with its reference classifier (workers/trainer/reference.py):
the Fréchet distance (FD) between its features of generated and real test images, the share of
samples it names with confidence beside the same share for real images, the entropy of its
predicted-class histogram and, for a conditional GAN, agreement with the requested label.
An unlabelled data set is scored with the standard FID Inception-v3, whose weights come from the
object store (an operator puts them there, or allows the download: docs/quality.md).

torchmetrics' FrechetInceptionDistance does the statistics for both, with the reference
classifier's penultimate layer as its custom feature extractor."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torchmetrics.image.fid import FrechetInceptionDistance

from shared.config import Settings
from shared.storage import ArtifactNotFound, ArtifactStore
from workers.trainer import reference
from workers.trainer.data import ImageData, Prepare
from workers.trainer.models.gans import LATENT
from workers.trainer.reference import CONFIDENT, FeatureHead, Reference

# A generator: (N, 100) seeds [+ (N,) class indices for a cGAN] -> (N, C, H, W) in [0, 1].
Generate = Callable[[Tensor, Tensor | None], Tensor]

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's name for it
BATCH = 250
SEED_OFFSET = 7_919  # the scoring seeds are the job's seed + this: never the training stream


class QualityUnavailable(Exception):
    """Sample quality cannot be measured for this job; the message says why."""


@dataclass
class QualityMeter:
    """Scores one job's generator against its data set's test split. Lower `fd`/`fid` is
    better; the real-image figures (`confident_real`, `fd_floor`) are what good looks like."""

    metric: str  # "fd" (reference classifier features) or "fid" (Inception-v3)
    fd: FrechetInceptionDistance
    reference: Reference | None
    z: Tensor  # (n, 100) fixed scoring seeds
    labels: Tensor | None  # (n,) requested classes, balanced, for a cGAN
    fixed: dict[str, float]  # figures of the real images, sent with every score

    @torch.no_grad()
    def score(self, generate: Generate) -> dict[str, float]:
        """Generate n samples from the fixed seeds and score them; the metric names are the
        event's: fd or fid, and with a reference classifier confident, confident_real,
        class_entropy (nats), fd_floor, and label_agreement for a cGAN."""
        self.fd.reset()  # keeps the real features (reset_real_features=False)
        probs: list[Tensor] = []
        for i in range(0, len(self.z), BATCH):
            labels = None if self.labels is None else self.labels[i : i + BATCH]
            fake = generate(self.z[i : i + BATCH], labels).float().clamp(0, 1)
            self.fd.update(_for_metric(fake, self.metric), real=False)
            if self.reference is not None:
                probs.append(self.reference.probabilities(fake))
        scores = {self.metric: float(self.fd.compute()), **self.fixed}
        if self.reference is not None:
            p = torch.cat(probs)
            named = p.argmax(1)
            scores["confident"] = (p.max(1).values >= CONFIDENT).float().mean().item()
            counts = torch.bincount(named, minlength=p.shape[1])
            scores["class_entropy"] = reference.entropy(counts)
            if self.labels is not None:
                scores["label_agreement"] = (named == self.labels).float().mean().item()
        return scores


def _for_metric(x: Tensor, metric: str) -> Tensor:
    # Inception takes 3 channels; the reference classifier adapts channels itself.
    return x.expand(-1, 3, -1, -1) if metric == "fid" and x.shape[1] == 1 else x


def meter_for(
    data: ImageData,
    prepare: Prepare,
    conditional: bool,
    store: ArtifactStore,
    settings: Settings,
    device: torch.device,
    seed: int,
) -> QualityMeter:
    """The quality meter of a job on `data` (images prepared as the job trains on them).
    Labelled: the reference classifier, trained and cached first if missing. Unlabelled: the
    Inception-v3 weights from the object store. Raises QualityUnavailable with the reason."""
    if len(data.test_x) < settings.QUALITY_MIN_TEST:
        raise QualityUnavailable(
            f"{data.name}'s test split has {len(data.test_x)} images; a Fréchet distance needs "
            f"at least {settings.QUALITY_MIN_TEST} (TRAINYARD_QUALITY_MIN_TEST)"
        )
    n = min(settings.QUALITY_SAMPLES, len(data.test_x))  # real images; fakes: QUALITY_SAMPLES
    gen = torch.Generator().manual_seed(seed + SEED_OFFSET)
    # A seeded subset: splits may be stored sorted by class.
    test = data.test_x[torch.randperm(len(data.test_x), generator=gen)[:n].to(data.test_x.device)]
    real = torch.cat([prepare(test[i : i + BATCH]) for i in range(0, n, BATCH)])
    fakes = settings.QUALITY_SAMPLES
    z = torch.randn(fakes, LATENT, generator=gen).to(device)
    labels = (torch.arange(fakes) % max(data.num_classes, 1)).to(device) if conditional else None
    ref: Reference | None = None
    if data.num_classes >= 2:
        ref = reference.load_or_train(data, store, device)
        fd = FrechetInceptionDistance(FeatureHead(ref.net), reset_real_features=False)
        metric = "fd"
    else:
        path = inception_weights(store, settings)
        try:
            fd = FrechetInceptionDistance(
                2048, reset_real_features=False, normalize=True, feature_extractor_weights_path=path
            )
        except (RuntimeError, TypeError, KeyError) as exc:  # a state dict, but not Inception's
            Path(path).unlink(missing_ok=True)  # not kept: a fixed object is fetched next time
            raise QualityUnavailable(
                f"the weights at {settings.QUALITY_INCEPTION_KEY} are not the FID Inception-v3 "
                f"state dict: {str(exc).splitlines()[0]}"
            ) from None
        metric = "fid"
    fd = fd.to(device)
    for i in range(0, n, BATCH):
        fd.update(_for_metric(real[i : i + BATCH], metric), real=True)
    fixed: dict[str, float] = {}
    if ref is not None:
        probs = ref.probabilities(real)
        fixed["confident_real"] = (probs.max(1).values >= CONFIDENT).float().mean().item()
        fixed["fd_floor"] = _floor(ref, data, prepare, real, gen)
    return QualityMeter(metric, fd, ref, z, labels, fixed)


def _floor(
    ref: Reference, data: ImageData, prepare: Prepare, test: Tensor, gen: torch.Generator
) -> float:
    """FD between as many real train images as `test` holds and `test`: the best a generator
    can do (two samples of one distribution differ by this much)."""
    floor = FrechetInceptionDistance(FeatureHead(ref.net)).to(test.device)
    n = len(test)
    pick = torch.randperm(len(data.train_x), generator=gen)[:n].to(data.train_x.device)
    train = data.train_x[pick]
    for i in range(0, len(train), BATCH):
        floor.update(prepare(train[i : i + BATCH]), real=True)
    for i in range(0, n, BATCH):
        floor.update(test[i : i + BATCH], real=False)
    value = float(floor.compute())
    return value if math.isfinite(value) else 0.0


def inception_weights(store: ArtifactStore, settings: Settings) -> str:
    """A local path to the FID Inception-v3 weights (torch-fidelity's file), fetched from the
    object store at QUALITY_INCEPTION_KEY and kept under DATA_DIR. Missing there: downloaded
    and stored only if QUALITY_INCEPTION_DOWNLOAD is on, else QualityUnavailable. The file is
    read with weights_only=True first, so a file that carries code is refused."""
    local = Path(settings.DATA_DIR) / "models" / INCEPTION_FILE
    if not local.exists():
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_suffix(".part")
        try:
            partial.write_bytes(store.get_bytes(settings.QUALITY_INCEPTION_KEY))
        except ArtifactNotFound:
            if not settings.QUALITY_INCEPTION_DOWNLOAD:
                raise QualityUnavailable(
                    f"no FID Inception-v3 weights at {settings.QUALITY_INCEPTION_KEY} in the "
                    "object store (docs/quality.md: put them there, or set "
                    "TRAINYARD_QUALITY_INCEPTION_DOWNLOAD=true)"
                ) from None
            torch.hub.download_url_to_file(URL_INCEPTION_V3, str(partial), progress=False)
            store.put_bytes(settings.QUALITY_INCEPTION_KEY, partial.read_bytes())
        try:
            torch.load(partial, map_location="cpu", weights_only=True)
        except Exception as exc:
            partial.unlink(missing_ok=True)
            raise QualityUnavailable(
                f"the Inception-v3 weights at {settings.QUALITY_INCEPTION_KEY} are not a plain "
                f"state dict: {exc}"
            ) from None
        partial.replace(local)
    return str(local)
