"""Recipes: how one training step, evaluation and sample grid work for each task.

fit() is the same loop for every task; a recipe holds the task's models and optimisers."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.utils import make_grid

from shared.schemas import ClassifierSpec, JobSpec
from workers.trainer.data import ImageData
from workers.trainer.models import build_model

EVAL_BATCH = 1000
GRID_IMAGES = 64


class Recipe(Protocol):
    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]: ...
    def evaluate(self) -> dict[str, float]: ...
    def sample_grid(self) -> Tensor: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def export(self) -> dict[str, Any]: ...


class ClassifierRecipe:
    """BOOK.md §2: Sigmoid outputs, BCELoss against one-hot targets, Adam."""

    def __init__(self, spec: ClassifierSpec, data: ImageData, device: torch.device) -> None:
        self.spec, self.data = spec, data
        self.model = build_model(spec.model).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=spec.lr)
        self.loss_fn = nn.BCELoss()

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        self.model.train()
        loss = self.loss_fn(self.model(x), F.one_hot(y, self.data.num_classes).float())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach()}

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        self.model.eval()
        return torch.cat([self.model(x[i : i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])

    def evaluate(self) -> dict[str, float]:
        """Held-out accuracy and loss on the data set's test split."""
        scores = self.predict(self.data.test_x)
        target = F.one_hot(self.data.test_y, self.data.num_classes).float()
        correct = (scores.argmax(1) == self.data.test_y).sum().item()
        return {
            "test_accuracy": correct / len(self.data.test_y),
            "test_loss": F.binary_cross_entropy(scores, target).item(),
        }

    def sample_grid(self) -> Tensor:
        """64 test digits spread over the split, white if predicted right, red if wrong."""
        pick = torch.linspace(0, len(self.data.test_x) - 1, GRID_IMAGES).long()
        x, y = (
            self.data.test_x[pick.to(self.data.test_x.device)],
            self.data.test_y[pick.to(self.data.test_y.device)],
        )
        wrong = (self.predict(x).argmax(1) != y).view(-1, 1, 1, 1).float()
        rgb = x.repeat(1, 3, 1, 1)  # (N, 3, H, W)
        rgb[:, 1:] *= 1 - 0.7 * wrong  # dim green and blue on mistakes -> red digits
        return make_grid(rgb, nrow=8, padding=2, pad_value=0.5)

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
        }


def make_recipe(spec: JobSpec, data: ImageData, device: torch.device) -> Recipe:
    if isinstance(spec, ClassifierSpec):
        return ClassifierRecipe(spec, data, device)
    raise ValueError(f"no recipe for task {spec.task!r}")
