"""Recipes: one training step, evaluation, sample grid and reports for each task.

fit() is the same loop for every task; a recipe holds the task's models and optimisers."""

from __future__ import annotations

import copy
import io
import json
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.utils import make_grid

from shared.schemas import CganSpec, ClassifierSpec, GanSpec, JobSpec
from shared.zoo import MODELS
from workers.trainer.augment import diff_augment
from workers.trainer.clusters import Clusters
from workers.trainer.clusters import cluster as cluster_images
from workers.trainer.data import ImageData, Prepare
from workers.trainer.models import build_gan, build_model
from workers.trainer.models.gans import LATENT, SelfConditionedGenerator
from workers.trainer.speed import Forward, training_forward

EVAL_BATCH = 500
GRID_COLUMNS = 8


class Recipe(Protocol):
    """train_step takes uint8 images as stored and prepares them (per micro-batch), with
    their `train_labels` (the data set's labels, or what the recipe trains on instead)."""

    prepare: Prepare
    train_labels: Tensor  # (N,) int64, one per train image, on the data's device

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]: ...
    def evaluate(self) -> dict[str, float]: ...
    def sample_grid(self) -> Tensor: ...
    def reports(self) -> dict[str, tuple[bytes, str]]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def export(self) -> dict[str, Any]: ...


def _prepare_for(spec: JobSpec) -> Prepare:
    image = MODELS[spec.model].image
    return Prepare(spec.crop_hw(), spec.resize_hw(), image[0] if image else None)


class ClassifierRecipe:
    """Make Your First GAN With PyTorch, ch. 3, §3.1.6: Sigmoid outputs, BCELoss against one-hot
    targets, Adam."""

    def __init__(
        self,
        spec: ClassifierSpec,
        data: ImageData,
        device: torch.device,
        micro_batch: int | None = None,
    ) -> None:
        self.spec, self.data = spec, data
        self.prepare = _prepare_for(spec)
        self.micro = micro_batch or spec.batch_size
        with device:  # parameters are created on the device: no host copy, and traceable
            self.model = build_model(spec.model)
        self.train_forward = training_forward(spec, self.model, device)  # the speed flags
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=spec.lr)
        self.loss_fn = nn.BCELoss()
        self.outputs = 10  # the book's models have 10 outputs whatever the data set
        self.train_labels = data.train_y

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """One optimiser step on a uint8 batch, accumulated over micro-batches if set."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=x.device)
        for xs, ys in zip(x.split(self.micro), y.split(self.micro), strict=True):
            share = len(xs) / len(x)  # mean over the whole batch, whatever the split
            out = self.train_forward(self.prepare(xs))
            loss = self.loss_fn(out, F.one_hot(ys, self.outputs).float())
            (loss * share).backward()
            total += loss.detach() * share
        self.optimizer.step()
        return {"loss": total}

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Class scores for uint8 images, in eval mode, in batches."""
        self.model.eval()
        parts = [
            self.model(self.prepare(x[i : i + EVAL_BATCH])) for i in range(0, len(x), EVAL_BATCH)
        ]
        return torch.cat(parts)

    def evaluate(self) -> dict[str, float]:
        """Held-out accuracy and loss on the data set's test split."""
        scores = self.predict(self.data.test_x)
        target = F.one_hot(self.data.test_y, self.outputs).float()
        correct = (scores.argmax(1) == self.data.test_y).sum().item()
        return {
            "test_accuracy": correct / len(self.data.test_y),
            "test_loss": F.binary_cross_entropy(scores, target).item(),
        }

    def sample_grid(self) -> Tensor:
        """64 test images spread over the split, as they are if predicted right, red if wrong."""
        pick = torch.linspace(0, len(self.data.test_x) - 1, 64).long().to(self.data.test_x.device)
        x, y = self.data.test_x[pick], self.data.test_y[pick]
        wrong = (self.predict(x).argmax(1) != y).view(-1, 1, 1, 1).float()
        rgb = self.prepare(x).expand(-1, 3, -1, -1).clone()  # (N, 3, H, W)
        rgb[:, 1:] *= 1 - 0.7 * wrong  # dim green and blue on mistakes -> red
        return make_grid(rgb, nrow=GRID_COLUMNS, padding=2, pad_value=0.5)

    def confusion(self) -> list[list[int]]:
        """confusion[true][predicted] counts on the test split."""
        k = max(self.data.num_classes, 1)
        predicted = self.predict(self.data.test_x).argmax(1).clamp(max=k - 1)
        flat = self.data.test_y * k + predicted
        return torch.bincount(flat, minlength=k * k).view(k, k).tolist()

    def reports(self) -> dict[str, tuple[bytes, str]]:
        matrix = self.confusion()
        table = {
            "classes": self.data.classes,
            "matrix": matrix,
            "note": "matrix[true][predicted] on the held-out test split",
        }
        return {
            "confusion.json": (json.dumps(table, indent=1).encode(), "application/json"),
            "confusion.png": (_confusion_png(matrix, self.data.classes), "image/png"),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def export(self) -> dict[str, Any]:
        """final/model.pt: the weights and what is needed to rebuild the model."""
        return {
            "model_name": self.spec.model,
            "state_dict": self.model.state_dict(),
            "spec": self.spec.model_dump(mode="json"),
            "classes": self.data.classes,
        }


@dataclass(frozen=True)
class GanTricks:
    """Extras of fast-mode GAN training, each a known tool of the field, each measured on
    mnist-5k by bench/gan_quality.py (bench/RESULTS.md): FAST_TRICKS holds the ones that paid,
    NO_TRICKS switches all of them off (the fast recipe before issue 17). Book mode uses none.

    - `ema`: sample from an exponential moving average of G's weights, with this decay
      (ramped up as (1 + t) / (10 + t) over the first steps), not from G's last step; 0 is
      off. Yazici et al., "The Unusual Effectiveness of Averaging in GAN Training", ICLR 2019;
      Karras et al. (Progressive GAN, ICLR 2018) sample this way.
    - `augment`: DiffAugment (Zhao et al., NeurIPS 2020): these differentiable transforms
      (workers/trainer/augment.py) applied to real and fake images whenever D sees them, in
      D's and in G's pass, drawn from the job's own generator (GanRecipe.rng).
    - `lr_d`, `lr_g`: factors on spec.lr for D's and G's Adam (TTUR: two time-scale update
      rule, Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local
      Nash Equilibrium", NeurIPS 2017).
    - `spectral_norm`: spectral normalisation of D's weights in place of its BatchNorm
      (Miyato et al., ICLR 2018); conv_gan and conv_cgan only.
    - `real_label`: D's target for real images; 0.9 is one-sided label smoothing (Salimans
      et al., "Improved Techniques for Training GANs", NeurIPS 2016), 1.0 is none.
    - `self_condition`: conv_gan only; if on, the unconditional GAN is conditioned on
      clusters of its own train images (workers/trainer/clusters.py; Liu et al., "Diverse
      Image Generation via Self-Conditioned GANs", CVPR 2020): G reads the cluster from its
      seed (models.gans.SelfConditionedGenerator), D takes it by projection. G(z) stays
      unconditional to its users."""

    ema: float = 0.0
    augment: tuple[str, ...] = ()
    lr_d: float = 1.0
    lr_g: float = 1.0
    spectral_norm: bool = False
    real_label: float = 0.9
    self_condition: bool = False


NO_TRICKS = GanTricks()  # the fast recipe as it was before issue 17: every trick off
# What fast mode uses, with FAST_DEFAULTS' lr 2e-3 (bench/gan_quality.py, bench/RESULTS.md).
FAST_TRICKS = GanTricks(ema=0.999, self_condition=True)
# A training step's draws (latents, a cGAN's fake labels, augmentation) come from the job's
# own generator seeded with spec.seed + this, never from the global RNG (which seeds only the
# weight init): so trials packed into one process each keep their own stream (pack.py).
STEP_SEED_OFFSET = 104_729


class GanRecipe:
    """GANs and conditional GANs, BCELoss and Adam, in the book's step order: D on real -> 1,
    D on G(z).detach() -> 0, then G -> 1 through D. A conditional GAN joins a one-hot label
    to D's and G's inputs: the real image's own label, and random labels for fakes."""

    def __init__(
        self,
        spec: GanSpec | CganSpec,
        data: ImageData,
        device: torch.device,
        micro_batch: int | None = None,
        tricks: GanTricks | None = None,
        clusters: Clusters | None = None,
    ) -> None:
        self.spec, self.data, self.device = spec, data, device
        self.prepare = _prepare_for(spec)
        self.micro = micro_batch or spec.batch_size
        self.book = spec.mode == "book"
        # Book mode is the book's recipe, exactly: no extras whatever is asked.
        self.tricks = NO_TRICKS if self.book else (tricks or FAST_TRICKS)
        info = MODELS[spec.model]
        c, h, w = self.prepare(data.train_x[:1]).shape[1:]
        # The book's cGAN has a fixed 10 label slots; ours is sized to the data set's classes.
        fixed = info.max_classes if info.image is not None else None
        self.classes = (fixed or data.num_classes) if spec.task == "cgan" else 0
        activation = spec.activation if isinstance(spec, GanSpec) else "leaky_relu"
        sn = self.tricks.spectral_norm and spec.model in ("conv_gan", "conv_cgan")
        # Self-conditioning: cluster indices stand in for labels in D's real and fake passes.
        # They depend on the data alone: the trials of a pack pass theirs on (`clusters`).
        self.clusters = (
            (clusters or cluster_images(data, self.prepare))
            if self.tricks.self_condition and spec.model == "conv_gan"
            else None
        )
        k = self.clusters.k if self.clusters else 0
        with device:
            self.D, self.G = build_gan(spec.model, (c, h, w), self.classes, activation, sn, k)
        self.conditioned_g = self.G if isinstance(self.G, SelfConditionedGenerator) else None
        if self.conditioned_g is not None and self.clusters is not None:
            self.conditioned_g.set_prior(self.clusters.prior)
        self.train_labels = (
            data.train_y if self.clusters is None else self.clusters.train.to(data.train_x.device)
        )
        # Training passes go through the speed flags; evaluation and grids use D and G as they are.
        self.train_d = training_forward(spec, self.D, device)
        self.train_g = training_forward(spec, self.G, device)
        # Book: Adam with default betas at the book's lr. Fast: the DCGAN recipe (beta1 0.5).
        betas = (0.9, 0.999) if self.book else (0.5, 0.999)
        lr_d, lr_g = spec.lr * self.tricks.lr_d, spec.lr * self.tricks.lr_g
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=lr_d, betas=betas)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=lr_g, betas=betas)
        self.loss_fn = nn.BCELoss()
        # The G that samples (grids, scores, export): an EMA copy of G, or G itself.
        self.G_ema: nn.Module | None = None
        self.ema_steps = 0
        if self.tricks.ema:
            self.G_ema = copy.deepcopy(self.G).requires_grad_(False)
        # Every draw of a training step comes from the job's own generator, on the device (no
        # host syncs); checkpoints carry its state.
        self.rng = torch.Generator(device=device)
        self.rng.manual_seed(spec.seed + STEP_SEED_OFFSET)
        # One fixed latent batch per job (seeded): every grid renders the same seeds, so the
        # grids form a timeline. cGANs get one row per label.
        gen = torch.Generator().manual_seed(spec.seed)
        rows = min(self.classes, 100) if self.classes else GRID_COLUMNS
        self.fixed_z = torch.randn(rows * GRID_COLUMNS, LATENT, generator=gen).to(device)
        self.fixed_labels = (
            self._one_hot(torch.arange(rows).repeat_interleave(GRID_COLUMNS))
            if self.classes
            else None
        )

    def _one_hot(self, labels: Tensor) -> Tensor:
        return F.one_hot(labels.to(self.device), self.classes).float()

    def _random_labels(self, n: int) -> Tensor | None:
        if not self.classes:
            return None
        drawn = torch.randint(self.data.num_classes, (n,), generator=self.rng, device=self.device)
        return self._one_hot(drawn)

    def _real_condition(self, y: Tensor) -> Tensor | None:
        """D's condition for real images with these labels (cluster indices when
        self-conditioned): one-hot, or None for a plain GAN."""
        if self.clusters is not None:
            return F.one_hot(y.to(self.device), self.clusters.k).float()
        return self._one_hot(y) if self.classes else None

    def _fake_condition(self, z: Tensor, label: Tensor | None) -> Tensor | None:
        """D's condition for G(z, label): the label itself, or the cluster G read from z."""
        if self.conditioned_g is not None:
            return self.conditioned_g.one_hot(z)
        return label

    def _d(self, x: Tensor, label: Tensor | None) -> Tensor:
        return _call(self.train_d, x, label)

    def _g(self, z: Tensor, label: Tensor | None) -> Tensor:
        return _call(self.train_g, z, label)

    def _seed(self, n: int) -> Tensor:
        return torch.randn(n, LATENT, generator=self.rng, device=self.device)

    def _bce(self, out: Tensor, target: float) -> Tensor:
        return self.loss_fn(out, torch.full_like(out, target))

    def _augment(self, x: Tensor) -> Tensor:
        """DiffAugment's transforms, if on (a fresh draw per call, per image)."""
        return diff_augment(x, self.tricks.augment, self.rng) if self.tricks.augment else x

    @property
    def sampler(self) -> nn.Module:
        """The generator that samples: the EMA copy when on, else G."""
        return self.G if self.G_ema is None else self.G_ema

    @torch.no_grad()
    def _update_ema(self) -> None:
        """G_ema <- decay * G_ema + (1 - decay) * G, the decay ramped up over the first steps
        so the random initial weights fade out; BatchNorm statistics are copied."""
        if self.G_ema is None:
            return
        self.ema_steps += 1
        decay = min(self.tricks.ema, (1 + self.ema_steps) / (10 + self.ema_steps))
        ema: list[Tensor] = list(self.G_ema.parameters())
        live: list[Tensor] = list(self.G.parameters())
        torch._foreach_lerp_(ema, live, 1 - decay)
        for mine, theirs in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
            mine.copy_(theirs)

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """One D and one G update on a uint8 batch of real images and their `train_labels`
        (the data set's labels, or cluster indices when self-conditioned: not the labels)."""
        self.D.train()
        self.G.train()
        if self.book:
            return self._book_step(self.prepare(x), self._one_hot(y) if self.classes else None)
        n = len(x)
        z, fake_label = self._seed(n), self._random_labels(n)
        d_fake_label = self._fake_condition(z, fake_label)
        chunks = [slice(i, i + self.micro) for i in range(0, n, self.micro)]
        # D on real and on G(z).detach(), accumulated over micro-batches, one D update.
        self.opt_d.zero_grad(set_to_none=True)
        zero = torch.zeros((), device=self.device)
        fakes: list[Tensor | None] = []
        d_loss, d_real, d_fake, g_loss = zero, zero, zero, zero
        for c in chunks:
            share = len(x[c]) / n
            real_label = self._real_condition(y[c])
            fake = self._g(z[c], _part(fake_label, c))
            out_real, out_fake = (
                self._d(self._augment(self.prepare(x[c])), real_label),
                self._d(self._augment(fake.detach()), _part(d_fake_label, c)),
            )
            # One-sided label smoothing (real target 0.9) keeps D from overpowering G.
            loss = self._bce(out_real, self.tricks.real_label) + self._bce(out_fake, 0.0)
            (loss * share).backward()
            d_loss = d_loss + loss.detach() * share
            d_real = d_real + out_real.detach().mean() * share
            d_fake = d_fake + out_fake.detach().mean() * share
            fakes.append(fake if len(chunks) == 1 else None)  # keep the graph only if one chunk
        self.opt_d.step()
        # G through the updated D, the same seeds; recomputed per chunk when split.
        self.opt_g.zero_grad(set_to_none=True)
        for c, kept in zip(chunks, fakes, strict=True):
            fake = kept if kept is not None else self._g(z[c], _part(fake_label, c))
            loss = self._bce(self._d(self._augment(fake), _part(d_fake_label, c)), 1.0)
            (loss * len(x[c]) / n).backward()
            g_loss = g_loss + loss.detach() * len(x[c]) / n
        self.opt_g.step()
        self._update_ema()
        return {
            "d_loss": d_loss,
            "g_loss": g_loss,
            "d_real": d_real,
            "d_fake": d_fake,
        }

    def _book_step(self, x: Tensor, real_label: Tensor | None) -> dict[str, Tensor]:
        """Exactly the book: three separate updates, each with its own seed (and label)."""
        n = len(x)
        d_real = self._d(x, real_label)
        loss_real = self._update(self.opt_d, self._bce(d_real, 1.0))
        fake_label = self._random_labels(n)
        fake = self._g(self._seed(n), fake_label).detach()
        d_fake = self._d(fake, fake_label)
        loss_fake = self._update(self.opt_d, self._bce(d_fake, 0.0))
        g_label = self._random_labels(n)
        g_loss = self._update(
            self.opt_g, self._bce(self._d(self._g(self._seed(n), g_label), g_label), 1.0)
        )
        return {
            "d_loss": loss_real + loss_fake,
            "g_loss": g_loss,
            "d_real": d_real.detach().mean(),
            "d_fake": d_fake.detach().mean(),
        }

    @staticmethod
    def _update(optimizer: torch.optim.Optimizer, loss: Tensor) -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean D(real) on held-out images and mean D(G(z)) on the fixed seeds."""
        self.D.eval()
        self.G.eval()
        n = len(self.fixed_z)  # as many real images as fixed seeds
        x = self.data.test_x[:n]
        y = self.data.test_y[:n] if self.clusters is None else self.clusters.test[:n]
        fake = _call(self.G, self.fixed_z, self.fixed_labels)
        fake_label = self._fake_condition(self.fixed_z, self.fixed_labels)
        return {
            "test_d_real": _call(self.D, self.prepare(x), self._real_condition(y)).mean().item(),
            "test_d_fake": _call(self.D, fake, fake_label).mean().item(),
        }

    @torch.no_grad()
    def generate(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Samples for scoring and grids, in eval mode, from the sampling G (the EMA copy when
        on): (N, 100) seeds [+ (N,) class indices for a cGAN] -> (N, C, H, W) in [0, 1]."""
        sampler = self.sampler.eval()
        return _call(sampler, z, None if labels is None else self._one_hot(labels))

    def fixed_samples(self) -> Tensor:
        """The grid's samples from the job's fixed seeds (one row per label for a cGAN)."""
        labels = None if self.fixed_labels is None else self.fixed_labels.argmax(1)
        return self.generate(self.fixed_z, labels)

    def sample_grid(self) -> Tensor:
        images = self.fixed_samples()  # (R * 8, C, H, W)
        return make_grid(images, nrow=GRID_COLUMNS, padding=2, pad_value=0.5)

    def reports(self) -> dict[str, tuple[bytes, str]]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        state = {
            "D": self.D.state_dict(),
            "G": self.G.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "generator": self.rng.get_state(),
        }
        if self.clusters is not None:  # a resume elsewhere trains on these, not a re-run's
            state["clusters"] = {"train": self.clusters.train, "test": self.clusters.test}
        if self.G_ema is not None:
            state["G_ema"] = self.G_ema.state_dict()
            state["ema_steps"] = self.ema_steps
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.D.load_state_dict(state["D"])
        self.G.load_state_dict(state["G"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.opt_g.load_state_dict(state["opt_g"])
        # "generator" since issue 19, "augment_rng" (augmentation only) in issue 17, neither
        # before; a CPU generator's state does not fit a CUDA one (a job resumed on another
        # kind of device): in those cases the seeded stream goes on.
        rng = state.get("generator", state.get("augment_rng"))
        if rng is not None and rng.numel() == self.rng.get_state().numel():
            self.rng.set_state(rng.cpu())
        saved = state.get("clusters")
        if self.clusters is not None and saved is not None:
            self.clusters.train.copy_(saved["train"])
            self.clusters.test.copy_(saved["test"])
            self.train_labels.copy_(saved["train"])  # in place: the batches hold this tensor
        if self.G_ema is not None:
            # A checkpoint written without EMA: the average starts again from its G.
            self.G_ema.load_state_dict(state.get("G_ema", state["G"]))
            self.ema_steps = int(state.get("ema_steps", 0))

    def export(self) -> dict[str, Any]:
        """final/model.pt: the generator for sampling (the EMA copy when on) and D, for
        fine-tuning, with the extras it was trained with."""
        return {
            "model_name": self.spec.model,
            "state_dict": self.sampler.state_dict(),
            "discriminator": self.D.state_dict(),
            "tricks": {
                k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.tricks).items()
            },
            "spec": self.spec.model_dump(mode="json"),
            "latent_dim": LATENT,
            "image": list(self.prepare(self.data.train_x[:1]).shape[1:]),  # (C, H, W)
            "clusters": self.clusters.k if self.clusters else 0,
            "num_classes": self.classes,
            "classes": self.data.classes,
        }


def make_recipe(
    spec: JobSpec,
    data: ImageData,
    device: torch.device,
    micro_batch: int | None = None,
    tricks: GanTricks | None = None,
    clusters: Clusters | None = None,
) -> Recipe:
    """The recipe of `spec`; `tricks` (GANs, fast mode) overrides FAST_TRICKS, for benches;
    `clusters` (self-conditioned GANs) are reused, not made again (a pack's trials share
    them)."""
    if isinstance(spec, ClassifierSpec):
        return ClassifierRecipe(spec, data, device, micro_batch)
    return GanRecipe(spec, data, device, micro_batch, tricks, clusters)


def _call(model: Forward, x: Tensor, label: Tensor | None) -> Tensor:
    """A conditional model takes the one-hot label too; labels are None when unconditional."""
    return model(x) if label is None else model(x, label)


def _part(t: Tensor | None, c: slice) -> Tensor | None:
    return None if t is None else t[c]


def _confusion_png(matrix: list[list[int]], classes: list[str], cell: int = 28) -> bytes:
    """A heat map of the confusion matrix with its counts, row = true class."""
    k = len(matrix)
    margin = cell * 2
    img = Image.new("RGB", (margin + k * cell, margin + k * cell), "white")
    draw = ImageDraw.Draw(img)
    for i, row in enumerate(matrix):
        total = max(sum(row), 1)
        draw.text(
            (4, margin + i * cell + cell // 3),
            classes[i][:6] if i < len(classes) else str(i),
            fill="black",
        )
        draw.text(
            (margin + i * cell + 4, cell // 2),
            classes[i][:3] if i < len(classes) else str(i),
            fill="black",
        )
        for j, count in enumerate(row):
            shade = int(255 * (1 - count / total))
            colour = (shade, shade, 255) if i == j else (255, shade, shade)
            box = (
                margin + j * cell,
                margin + i * cell,
                margin + (j + 1) * cell - 1,
                margin + (i + 1) * cell - 1,
            )
            draw.rectangle(box, fill=colour)
            if count:
                draw.text((box[0] + 3, box[1] + cell // 3), str(count), fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
