"""What fit() watches beside training (docs/quality.md): non-finite losses end the job
(Diverged), health warnings go on the job, GAN samples are scored, and the best-scoring model
is kept for final/best.pt."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from shared.config import Settings, get_settings
from shared.schemas import BestCheckpoint, HealthWarning, JobSpec
from workers.trainer import checkpoint, quality
from workers.trainer.data import ImageData
from workers.trainer.recipes import GanRecipe, Recipe
from workers.trainer.run import Run

log = logging.getLogger(__name__)

MAX_SPREAD_IMAGES = 64  # real images the mode-collapse check compares the fixed samples with


class Diverged(Exception):
    """A loss became NaN or infinite: the job fails, keeping its last good checkpoint."""

    def __init__(self, step: int, names: list[str], checkpoint_step: int | None) -> None:
        kept = (
            f"the last good checkpoint is step {checkpoint_step}"
            if checkpoint_step is not None
            else "no checkpoint was written before it"
        )
        super().__init__(f"diverged at step {step}: non-finite {', '.join(names)}; {kept}")
        self.step = step


class FiniteGuard:
    """Remembers on the device the first step whose losses were not all finite, so that
    checking costs no host sync per step; check() reads it at logs and before a save."""

    def __init__(self, device: torch.device) -> None:
        self.first_bad = torch.zeros((), dtype=torch.long, device=device)  # 0: none yet
        self.bad_mask: Tensor | None = None
        self.names: list[str] = []

    def observe(self, step: int, losses: dict[str, Tensor]) -> None:
        if not self.names:
            self.names = list(losses)
        finite = torch.stack([v.detach().float() for v in losses.values()]).isfinite()
        new = (self.first_bad == 0) & ~finite.all()
        self.first_bad = torch.where(new, step, self.first_bad)
        kept = self.bad_mask if self.bad_mask is not None else ~finite
        self.bad_mask = torch.where(new, ~finite, kept)

    def first(self) -> tuple[int, list[str]] | None:
        """(step, names of the non-finite losses) of the first bad step, or None."""
        step = int(self.first_bad)
        if not step or self.bad_mask is None:
            return None
        return step, [n for n, bad in zip(self.names, self.bad_mask.tolist(), strict=True) if bad]


def spread(x: Tensor, groups: Tensor | None = None) -> float:
    """Mean pairwise L2 distance between the images of `x` (N, C, H, W), within each group of
    `groups` (N,) when given (a cGAN's samples per label), averaged over groups."""
    flat = x.flatten(1).float()
    ids = groups.unique() if groups is not None else None
    parts = [flat] if ids is None or groups is None else [flat[groups == g] for g in ids]
    values = [torch.pdist(p).mean() for p in parts if len(p) > 1]
    return float(torch.stack(values).mean()) if values else 0.0


class Monitor:
    """One per fit(): call observe() after every step, logged() at every log, check() before
    every save, score() with every sample grid, evaluated() after every epoch's evaluation."""

    def __init__(
        self,
        spec: JobSpec,
        recipe: Recipe,
        data: ImageData,
        run: Run,
        device: torch.device,
        settings: Settings | None = None,
    ) -> None:
        self.spec, self.recipe, self.data, self.run = spec, recipe, data, run
        self.settings = settings or get_settings()
        self.guard = FiniteGuard(device)
        self.saturated = 0  # consecutive logs with D winning outright
        self.best: BestCheckpoint | None = None
        self.best_state: dict[str, Any] | None = None
        self.scored_step = -1
        self.meter: quality.QualityMeter | None = None
        self.quality_note: str | None = None
        self.last_scores: dict[str, float] = {}  # the newest quality scores
        self.real_spread = 0.0
        if isinstance(recipe, GanRecipe):
            self._start_quality(recipe, device)

    def _start_quality(self, recipe: GanRecipe, device: torch.device) -> None:
        groups = recipe.fixed_labels.argmax(1) if recipe.fixed_labels is not None else None
        test_x, test_y = self.data.test_x, self.data.test_y
        # Spread over the split: a split may be stored sorted by class.
        pick = torch.linspace(0, len(test_x) - 1, MAX_SPREAD_IMAGES).long().unique()
        pick = pick.to(test_x.device)
        real = test_x[pick]
        real_groups = test_y[pick] if groups is not None else None
        self.real_spread = spread(recipe.prepare(real), real_groups)
        if not self.settings.QUALITY:
            self.quality_note = "sample quality is off (TRAINYARD_QUALITY=false)"
            return
        try:
            self.meter = quality.meter_for(
                self.data,
                recipe.prepare,
                recipe.classes > 0,
                self.run.store,
                self.settings,
                device,
                self.spec.seed,
            )
        except quality.QualityUnavailable as exc:
            self.quality_note = str(exc)
            self.run.emit("log", 0, 0, info={"quality_skipped": str(exc)}, flush=True)
            return
        ref = self.meter.reference
        if ref is not None:  # what the numbers are measured with
            about = {
                "dataset": self.data.name,
                "test_accuracy": ref.test_accuracy,
                "confident_real": ref.confident_real,
                "train_s": ref.train_s,
            }
            self.run.emit("log", 0, 0, info={"reference_classifier": about})

    # --- every step, every log, every save

    def observe(self, step: int, losses: dict[str, Tensor]) -> None:
        self.guard.observe(step, losses)

    def check(self) -> None:
        """Raise Diverged if any step so far had a non-finite loss; what was written before
        it is committed first, so the record names the last good checkpoint."""
        bad = self.guard.first()
        if bad is None:
            return
        self.run.drain()
        raise Diverged(bad[0], bad[1], self.run.last_checkpoint_step)

    def logged(self, step: int, epoch: int, losses: dict[str, Tensor]) -> None:
        """At a log: divergence, then whether D is winning outright (GANs)."""
        self.check()
        if "d_fake" not in losses:
            return
        s = self.settings
        d_wins = float(losses["d_fake"]) <= s.HEALTH_SATURATION_D_FAKE
        g_clamped = float(losses["g_loss"]) >= s.HEALTH_SATURATION_G_LOSS
        self.saturated = self.saturated + 1 if d_wins and g_clamped else 0
        if self.saturated == s.HEALTH_SATURATION_LOGS:
            self._warn(
                "d_wins",
                step,
                epoch,
                f"D wins outright: mean D(G(z)) <= {s.HEALTH_SATURATION_D_FAKE} and G's loss "
                f">= {s.HEALTH_SATURATION_G_LOSS} (BCE's clamp is 100) for {self.saturated} "
                "logs in a row; G gets no gradient (lower lr, or see docs/quality.md)",
            )

    # --- with every sample grid, and at the end

    def score(self, step: int, epoch: int) -> None:
        """Score a GAN's samples (a `quality` event), keep the best model, check collapse."""
        if not isinstance(self.recipe, GanRecipe) or step == self.scored_step:
            return
        self.scored_step = step
        recipe = self.recipe
        labels = recipe.fixed_labels.argmax(1) if recipe.fixed_labels is not None else None
        samples = recipe.fixed_samples()
        ratio = spread(samples, labels) / max(self.real_spread, 1e-12)
        if ratio < self.settings.HEALTH_COLLAPSE_RATIO:
            self._warn(
                "mode_collapse",
                step,
                epoch,
                f"mode collapse: the fixed-seed samples differ {ratio:.3f}x as much as real "
                f"images do (below {self.settings.HEALTH_COLLAPSE_RATIO})",
            )
        if self.meter is None:
            return
        scores = self.last_scores = self.meter.score(recipe.generate)
        self._offer(step, self.meter.metric, scores[self.meter.metric], lower_is_better=True)
        assert self.best is not None
        info = {"metric": self.meter.metric, "best_step": self.best.step, "best": self.best.value}
        self.run.emit("quality", step, epoch, scores, info=info, flush=True)

    def evaluated(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        """After an epoch's evaluation: a classifier's best epoch, and accuracy at chance."""
        if "test_accuracy" not in metrics:
            return
        accuracy = metrics["test_accuracy"]
        self._offer(step, "test_accuracy", accuracy, lower_is_better=False)
        s = self.settings
        chance = 1 / max(self.data.num_classes, 1)
        if epoch + 1 >= s.HEALTH_CHANCE_EPOCHS and accuracy <= chance + s.HEALTH_CHANCE_MARGIN:
            self._warn(
                "chance_accuracy",
                step,
                epoch,
                f"held-out accuracy {accuracy:.3f} after {epoch + 1} epochs is at chance "
                f"(1/{self.data.num_classes} = {chance:.3f}); check the lr and the labels",
            )

    def _offer(self, step: int, metric: str, value: float, lower_is_better: bool) -> None:
        best = self.best
        better = best is None or (value < best.value if lower_is_better else value > best.value)
        if better:
            self.best = BestCheckpoint(step=step, metric=metric, value=value)
            # A copy on the host (the weights keep training) of what samples or predicts: a
            # GAN's D stays out, so checkpoints, which carry this, grow by G only.
            export = {k: v for k, v in self.recipe.export().items() if k != "discriminator"}
            self.best_state = checkpoint.snapshot(export)

    def _warn(self, code: Any, step: int, epoch: int, message: str) -> None:
        log.warning("health: %s", message)
        self.run.warn(HealthWarning(code=code, step=step, message=message), epoch)

    # --- the end, and checkpoints

    def best_model(self) -> dict[str, Any] | None:
        """final/best.pt: the best step's export (as final/model.pt), with its score."""
        if self.best is None or self.best_state is None:
            return None
        return {**self.best_state, "best": self.best.model_dump(mode="json")}

    def state_dict(self) -> dict[str, Any]:
        return {
            "saturated": self.saturated,
            "best": None if self.best is None else self.best.model_dump(mode="json"),
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saturated = int(state.get("saturated", 0))
        best = state.get("best")
        self.best = None if best is None else BestCheckpoint.model_validate(best)
        self.best_state = state.get("best_state")
