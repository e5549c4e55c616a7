"""The book's GAN step order and the conditional GAN's label handling, observed with hooks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from shared.schemas import JobSpecAdapter
from workers.trainer.data import load_dataset
from workers.trainer.recipes import GanRecipe


@dataclass
class Call:
    who: str  # "D" or "G"
    inputs: tuple[Tensor, ...]
    output: Tensor


@dataclass
class Recorder:
    calls: list[Call] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)

    def watch(self, recipe: GanRecipe) -> None:
        for who, module in (("D", recipe.D), ("G", recipe.G)):
            module.register_forward_hook(self._hook(who))
        for who, opt in (("D", recipe.opt_d), ("G", recipe.opt_g)):
            opt.register_step_post_hook(lambda *_a, who=who: self.steps.append(who))

    def _hook(self, who: str) -> Any:
        def hook(_m: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            self.calls.append(
                Call(
                    who,
                    tuple(i.detach().clone() if isinstance(i, Tensor) else i for i in inputs),
                    output,
                )
            )
            self.calls[-1].inputs_require_grad = [  # type: ignore[attr-defined]
                isinstance(i, Tensor) and i.requires_grad for i in inputs
            ]

        return hook


def recipe_for(body: dict[str, Any]) -> tuple[GanRecipe, Recorder]:
    spec = JobSpecAdapter.validate_python(body)
    recipe = GanRecipe(spec, load_dataset("mnist-5k"), torch.device("cpu"))  # type: ignore[arg-type]
    rec = Recorder()
    rec.watch(recipe)
    return recipe, rec


def test_book_gan_step_order() -> None:
    recipe, rec = recipe_for({"task": "gan", "model": "conv_gan", "mode": "book"})
    x = recipe.prepare(load_dataset("mnist-5k").train_x[:1])
    metrics = recipe.train_step(x, torch.tensor([3]))
    # D on real -> 1, then G makes a fake that D sees detached -> 0, then G -> 1 through D
    assert [c.who for c in rec.calls] == ["D", "G", "D", "G", "D"]
    d_real, g1, d_fake, g2, d_g = rec.calls
    assert torch.equal(d_real.inputs[0], x)
    assert torch.equal(d_fake.inputs[0], g1.output.detach())
    assert not d_fake.inputs_require_grad[0]  # type: ignore[attr-defined]  # detached
    assert d_g.inputs_require_grad[0]  # type: ignore[attr-defined]  # G learns through D
    assert not torch.equal(g1.inputs[0], g2.inputs[0])  # a fresh seed for G's own update
    assert rec.steps == ["D", "D", "G"]  # the book updates D twice (real, fake), then G
    assert set(metrics) == {"d_loss", "g_loss", "d_real", "d_fake"}


def test_fast_gan_step_is_one_d_update_then_g() -> None:
    recipe, rec = recipe_for({"task": "gan", "model": "conv_gan"})
    x = recipe.prepare(load_dataset("mnist-5k").train_x[:8])
    recipe.train_step(x, torch.zeros(8, dtype=torch.long))
    assert [c.who for c in rec.calls] == ["G", "D", "D", "D"]
    assert not rec.calls[2].inputs_require_grad[0]  # type: ignore[attr-defined]
    assert rec.steps == ["D", "G"]


@pytest.mark.parametrize("model", ["book_cgan", "conv_cgan"])
def test_cgan_labels(model: str) -> None:
    recipe, rec = recipe_for({"task": "cgan", "model": model, "mode": "book"})
    data = load_dataset("mnist-5k")
    x, y = recipe.prepare(data.train_x[:1]), data.train_y[:1]
    recipe.train_step(x, y)
    d_real, g1, d_fake, g2, d_g = rec.calls
    one_hot = torch.nn.functional.one_hot(y, 10).float()
    assert torch.equal(d_real.inputs[1], one_hot)  # the real image with its own label
    assert torch.equal(d_fake.inputs[1], g1.inputs[1])  # the fake with the label G was given
    assert torch.equal(d_g.inputs[1], g2.inputs[1])
    for call in (g1, g2):
        assert call.inputs[1].sum() == 1 and call.inputs[1].shape == (1, 10)  # one-hot


def test_cgan_grid_has_one_row_per_label() -> None:
    recipe, _ = recipe_for({"task": "cgan", "model": "conv_cgan"})
    grid = recipe.sample_grid()
    assert grid.shape[1] == 10 * (28 + 2) + 2  # 10 rows of 28px with 2px padding
    assert recipe.fixed_labels is not None
    assert recipe.fixed_labels.argmax(1).tolist() == [i for i in range(10) for _ in range(8)]


def test_fixed_latent_batch_is_seeded() -> None:
    a, _ = recipe_for({"task": "gan", "model": "conv_gan", "seed": 5})
    b, _ = recipe_for({"task": "gan", "model": "conv_gan", "seed": 5})
    c, _ = recipe_for({"task": "gan", "model": "conv_gan", "seed": 6})
    assert torch.equal(a.fixed_z, b.fixed_z) and not torch.equal(a.fixed_z, c.fixed_z)
