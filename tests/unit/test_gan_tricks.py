"""Fast-mode GAN extras (issue 17): DiffAugment draws only from the job's own generator, and
the EMA generator and the augmentation stream survive a checkpoint, so a resumed job
continues exactly."""

from __future__ import annotations

import io
from dataclasses import replace

import torch

from shared.schemas import CganSpec, GanSpec
from workers.trainer.augment import cutout, diff_augment, translate
from workers.trainer.data import load_dataset
from workers.trainer.recipes import NO_TRICKS, GanRecipe

CPU = torch.device("cpu")
POLICY = ("translation", "cutout")


def batch() -> torch.Tensor:
    return torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_same_seed_same_augmented_batch_and_the_global_rng_untouched() -> None:
    x = batch()
    global_state = torch.get_rng_state()
    first = diff_augment(x, POLICY, torch.Generator().manual_seed(5))
    second = diff_augment(x, POLICY, torch.Generator().manual_seed(5))
    other = diff_augment(x, POLICY, torch.Generator().manual_seed(6))
    assert torch.equal(torch.get_rng_state(), global_state)
    assert torch.equal(first, second) and not torch.equal(first, other)
    assert first.shape == x.shape and not torch.equal(first, x)


def test_translation_shifts_and_cutout_zeroes_a_square() -> None:
    x = batch()
    shifted = translate(x, torch.Generator().manual_seed(0), ratio=0.0)
    assert torch.equal(shifted, x)  # no room to move: unchanged
    cut = cutout(torch.ones(4, 1, 28, 28), torch.Generator().manual_seed(0))
    zeros = (cut == 0).sum(dim=(1, 2, 3))
    assert bool((zeros > 0).all()) and bool((zeros <= 14 * 14).all())
    assert bool(((cut == 0) | (cut == 1)).all())


def test_augmentation_is_differentiable() -> None:
    x = batch().requires_grad_()
    diff_augment(x, POLICY, torch.Generator().manual_seed(0)).sum().backward()
    assert x.grad is not None and 0 < float(x.grad.sum()) < x.numel()


def state_bytes(recipe: GanRecipe) -> bytes:
    buf = io.BytesIO()
    torch.save(recipe.state_dict(), buf)
    return buf.getvalue()


def test_ema_and_augmentation_resume_exactly() -> None:
    data = load_dataset("mnist-5k")
    spec = CganSpec(batch_size=16, device="cpu")
    tricks = replace(NO_TRICKS, ema=0.99, augment=POLICY)
    x, y = data.train_x[:16], data.train_y[:16]
    torch.manual_seed(0)
    one = GanRecipe(spec, data, CPU, tricks=tricks)
    for _ in range(3):
        one.train_step(x, y)
    saved = torch.load(io.BytesIO(state_bytes(one)), weights_only=True)
    assert "G_ema" in saved and saved["ema_steps"] == 3
    rng = torch.get_rng_state()
    one.train_step(x, y)

    two = GanRecipe(spec, data, CPU, tricks=tricks)
    two.load_state_dict(saved)
    torch.set_rng_state(rng)
    two.train_step(x, y)
    assert two.G_ema is not None and one.G_ema is not None
    for a, b in zip(one.G_ema.state_dict().values(), two.G_ema.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    z, labels = torch.randn(4, 100), torch.arange(4)
    assert torch.equal(one.generate(z, labels), two.generate(z, labels))
    # The EMA copy is the G that samples and the one exported.
    assert not torch.equal(one.generate(z, labels), _live(one, z, labels))
    exported = one.export()["state_dict"]
    assert all(torch.equal(v, one.G_ema.state_dict()[k]) for k, v in exported.items())


def _live(recipe: GanRecipe, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    recipe.G.eval()
    return recipe.G(z, torch.nn.functional.one_hot(labels, recipe.classes).float())


def test_book_mode_takes_no_extras() -> None:
    spec = GanSpec(mode="book", device="cpu")
    recipe = GanRecipe(spec, load_dataset("mnist-5k"), CPU, tricks=replace(NO_TRICKS, ema=0.9))
    assert recipe.tricks == NO_TRICKS and recipe.G_ema is None


def test_bench_names_the_missed_targets() -> None:
    from bench.gan_quality import misses

    good = {"confident": 0.9, "confident_real": 0.96, "class_entropy": 2.3, "wall_s": 120.0}
    assert misses({**good, "label_agreement": 0.95}, {"wall_s": 100.0}, cgan=True) == []
    bad = {**good, "confident": 0.6, "class_entropy": 2.2, "label_agreement": 0.8, "wall_s": 130}
    missed = misses(bad, {"wall_s": 100.0}, cgan=True)
    assert [m.split()[0] for m in missed] == [
        "confident",
        "class_entropy",
        "label_agreement",
        "wall",
    ]
