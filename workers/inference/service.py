"""InferenceService: answer one samples or predict request (shared/state/inference.py) with a
trained job's model, kept in a ModelCache.

Models are rebuilt from the job's exports as training wrote them (workers/trainer/recipes.py
`export()`): final/model.pt, final/best.pt (the same, plus "best"), or a checkpoint
checkpoints/step-N.pt, whose weights ("G_ema" when EMA was on, else "G"; "model" for a
classifier) go into the architecture final/model.pt describes. Every file is read with
torch.load(weights_only=True).

Sampling is reproducible: the seeds come from a CPU torch.Generator seeded by the request's
seed, then move to the device, so a seed gives the same images on any worker (CPU or GPU, up
to float rounding at 8 bits), and the objects' names are derived from the request: the same
request writes the same keys with the same bytes."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.utils import make_grid

from shared.schemas import JobSpecAdapter
from shared.state.inference import InferenceAnswer, InferenceRequest
from shared.storage import ArtifactNotFound, ArtifactStore, JobKeys
from workers.inference.cache import ModelCache, module_bytes
from workers.trainer import checkpoint
from workers.trainer.data import Prepare
from workers.trainer.models import build_model, generator_from_export
from workers.trainer.models.gans import LATENT
from workers.trainer.recipes import GRID_COLUMNS, _prepare_for

log = logging.getLogger(__name__)
BATCH = 256  # images per forward pass
PNG_COMPRESS_LEVEL = 6


class InferenceError(Exception):
    """A request the model cannot answer: its HTTP status, message and field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


@dataclass(frozen=True)
class Loaded:
    """A model ready to use, with what the answers need."""

    kind: Literal["gan", "classifier"]
    module: nn.Module  # eval mode, on the worker's device
    step: int | None  # the step of its weights; None: final/model.pt (the job's last step)
    classes: list[str]
    num_classes: int  # a cGAN's one-hot width; 0 for an unconditional GAN
    latent: int
    prepare: Prepare | None  # a classifier's input preparation, as in training


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class InferenceService:
    def __init__(
        self, store: ArtifactStore, cache_bytes: int, device: torch.device | None = None
    ) -> None:
        self.store = store
        self.device = device or pick_device()
        self.models: ModelCache[Loaded] = ModelCache(cache_bytes)

    # --- one request

    def answer(self, request: InferenceRequest, images: bytes | None = None) -> InferenceAnswer:
        """The answer to `request` (a predict request's image bytes beside it): 200 with the
        result, the error status of an InferenceError, or 500 with what failed."""
        try:
            if request.kind == "samples":
                result = self.sample(request.job_id, **request.params)
            else:
                if images is None:
                    raise InferenceError(
                        500, "the request's images expired before the inference worker took it"
                    )
                result = self.predict(request.job_id, images, **request.params)
        except InferenceError as exc:
            return InferenceAnswer(status=exc.status, message=exc.message, field=exc.field)
        except Exception as exc:
            log.exception("inference request %s on job %s failed", request.id, request.job_id)
            return InferenceAnswer(
                status=500, message=f"the inference worker failed: {type(exc).__name__}: {exc}"
            )
        return InferenceAnswer(status=200, result=result)

    def sample(
        self,
        job_id: str,
        n: int,
        labels: list[int] | None,
        seed: int,
        checkpoint: str | int = "final",
        final_step: int = 0,
    ) -> dict[str, Any]:
        """Draw `n` images (with `labels` for a cGAN), store the grid PNG and the .npz under
        samples-on-demand/, and return their keys with what was drawn."""
        loaded = self.load(job_id, checkpoint)
        if loaded.kind != "gan":
            raise InferenceError(422, f"job {job_id} is not a GAN", "job_id")
        if (labels is None) != (loaded.num_classes == 0):
            need = "needs labels" if loaded.num_classes else "takes no labels"
            raise InferenceError(422, f"labels: job {job_id}'s generator {need}", "labels")
        if labels is not None and (len(labels) != n or max(labels) >= loaded.num_classes):
            raise InferenceError(
                422, f"labels: expected {n} labels in 0..{loaded.num_classes - 1}", "labels"
            )
        step = final_step if loaded.step is None else loaded.step
        images = generate(loaded, n, labels, seed, self.device)  # uint8 (N, C, H, W)
        name = sample_name(checkpoint, step, seed, n, labels)
        keys = JobKeys(job_id)
        grid_key, npz_key = keys.on_demand(f"{name}.png"), keys.on_demand(f"{name}.npz")
        self.store.put_bytes(grid_key, grid_png(images), "image/png")
        self.store.put_bytes(npz_key, samples_npz(images, labels))
        return {
            "checkpoint": checkpoint,
            "step": step,
            "seed": seed,
            "n": n,
            "labels": labels,
            "grid_key": grid_key,
            "images_key": npz_key,
            "shape": list(images.shape),
        }

    def predict(
        self,
        job_id: str,
        images: bytes,
        shape: list[int],
        checkpoint: str | int = "final",
        final_step: int = 0,
    ) -> dict[str, Any]:
        """Class probabilities of uint8 images (raw bytes of `shape`, N x C x H x W)."""
        loaded = self.load(job_id, checkpoint)
        if loaded.kind != "classifier" or loaded.prepare is None:
            raise InferenceError(422, f"job {job_id} is not a classifier", "job_id")
        x = torch.from_numpy(np.frombuffer(images, dtype=np.uint8).reshape(shape).copy())
        probs = classify(loaded, x, self.device)
        best = probs.argmax(1).tolist()
        return {
            "checkpoint": checkpoint,
            "step": final_step if loaded.step is None else loaded.step,
            "classes": loaded.classes,
            "probabilities": probs.tolist(),
            "predicted": best,
            "predicted_class": [loaded.classes[i] for i in best],
        }

    # --- models

    def load(self, job_id: str, which: str | int) -> Loaded:
        """The job's model at checkpoint `which`, from the cache or the object store."""

        def read() -> tuple[Loaded, int]:
            loaded = self._read(job_id, which)
            return loaded, module_bytes(loaded.module)

        return self.models.get((job_id, which), read)

    def _read(self, job_id: str, which: str | int) -> Loaded:
        keys = JobKeys(job_id)
        final = self._torch_load(keys.final_model, "final/model.pt")
        if which == "final":
            saved, step = final, None
        elif which == "best":
            saved = self._torch_load(keys.best_model, "final/best.pt")
            step = int(saved["best"]["step"])
        else:
            state = self._torch_load(keys.checkpoint(int(which)), f"checkpoint step {which}")
            weights = state.get("G_ema", state.get("G")) if "G" in state else state.get("model")
            if weights is None:
                raise InferenceError(422, f"checkpoint step {which} holds no model", "checkpoint")
            saved, step = {**final, "state_dict": weights}, int(which)
        spec = JobSpecAdapter.validate_python(final["spec"])
        classes = [str(c) for c in final.get("classes") or []]
        if spec.task == "classifier":
            module = build_model(final["model_name"])
            module.load_state_dict(saved["state_dict"])
            return Loaded(
                "classifier",
                module.to(self.device).eval(),
                step,
                classes,
                len(classes),
                0,
                _prepare_for(spec),
            )
        generator = generator_from_export(saved)
        return Loaded(
            "gan",
            generator.to(self.device).eval(),
            step,
            classes,
            int(final.get("num_classes", 0)),
            int(final.get("latent_dim", LATENT)),
            None,
        )

    def _torch_load(self, key: str, what: str) -> dict[str, Any]:
        try:
            data = self.store.get_bytes(key)
        except ArtifactNotFound as exc:
            raise InferenceError(404, f"checkpoint: the job has no {what}", "checkpoint") from exc
        try:
            found = checkpoint.from_bytes(data)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
            raise InferenceError(500, f"{what} cannot be loaded ({exc})") from exc
        if not isinstance(found, dict):
            raise InferenceError(500, f"{what} is not a trainyard export")
        return found


# --- the work itself (plain functions: unit-tested without a service)


@torch.no_grad()
def generate(
    loaded: Loaded, n: int, labels: list[int] | None, seed: int, device: torch.device
) -> Tensor:
    """uint8 (N, C, H, W) on the CPU: seeds from a CPU generator seeded by `seed`, then moved
    to `device` (the same seed gives the same seeds on every device)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, loaded.latent, generator=gen)
    parts = []
    for i in range(0, n, BATCH):
        zs = z[i : i + BATCH].to(device)
        if labels is None:
            out = loaded.module(zs)
        else:
            ys = torch.tensor(labels[i : i + BATCH], device=device)
            out = loaded.module(zs, F.one_hot(ys, loaded.num_classes).float())
        parts.append(to_uint8(out).cpu())
    return torch.cat(parts)


def to_uint8(x: Tensor) -> Tensor:
    """[0, 1] floats -> uint8, rounded as torchvision's save_image does."""
    return x.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


@torch.no_grad()
def classify(loaded: Loaded, x: Tensor, device: torch.device) -> Tensor:
    """(N, K) probabilities of uint8 images (N, C, H, W), as float64 on the CPU: the model's
    Sigmoid scores for the data set's K classes (the book's models have 10 outputs whatever
    the data set), normalised to sum 1."""
    assert loaded.prepare is not None
    k = len(loaded.classes) or None
    parts = []
    for i in range(0, len(x), BATCH):
        scores = loaded.module(loaded.prepare(x[i : i + BATCH].to(device)))
        parts.append(scores[:, :k].double().cpu())
    scores = torch.cat(parts).clamp_(min=0)
    total = scores.sum(1, keepdim=True)
    uniform = torch.full_like(scores, 1 / scores.shape[1])
    return torch.where(total > 0, scores / total.clamp(min=1e-300), uniform)


def sample_name(
    checkpoint: str | int, step: int, seed: int, n: int, labels: list[int] | None
) -> str:
    """The object name of a samples request: readable parts and a digest of all of them, so
    the same request always gives the same name and different requests different names."""
    tag = f"{checkpoint}-" if isinstance(checkpoint, str) else ""  # best-, final-, or none
    what = json.dumps([checkpoint, step, seed, n, labels], separators=(",", ":"))
    digest = hashlib.sha256(what.encode()).hexdigest()[:12]
    return f"{tag}step{step}-seed{seed}-n{n}-{digest}"


def grid_png(images: Tensor) -> bytes:
    """A PNG of uint8 (N, C, H, W) images, GRID_COLUMNS per row, as the training grids."""
    grid = make_grid(images.float().div(255), nrow=GRID_COLUMNS, padding=2, pad_value=0.5)
    hwc = to_uint8(grid).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(hwc).save(buf, format="png", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def samples_npz(images: Tensor, labels: list[int] | None) -> bytes:
    """images (uint8, N x C x H x W) and labels (int64, N; -1 without labels), compressed."""
    y = np.full(len(images), -1, dtype=np.int64) if labels is None else np.array(labels)
    buf = io.BytesIO()
    np.savez_compressed(buf, images=images.numpy(), labels=y.astype(np.int64))
    return buf.getvalue()
