from __future__ import annotations

import functools
import operator

import torch

from workers.trainer.data import Batches, load_dataset


def test_mnist_5k_split_is_fixed_balanced_and_disjoint() -> None:
    data = load_dataset("mnist-5k")
    assert data.train_x.shape == (4000, 1, 28, 28) and data.test_x.shape == (1000, 1, 28, 28)
    assert torch.bincount(data.train_y).tolist() == [400] * 10
    assert torch.bincount(data.test_y).tolist() == [100] * 10
    assert data.train_x.min() >= 0.0 and data.train_x.max() <= 1.0
    train = {tuple(row.tolist()) for row in (data.train_x.view(4000, -1) * 255).round().int()[:500]}
    test = {tuple(row.tolist()) for row in (data.test_x.view(1000, -1) * 255).round().int()}
    assert not train & test
    load_dataset.cache_clear()
    again = load_dataset("mnist-5k")
    assert torch.equal(again.test_x, data.test_x) and torch.equal(again.train_y, data.train_y)


def test_batches_are_seeded_per_epoch_and_skippable() -> None:
    x, y = torch.arange(10).float().view(10, 1), torch.arange(10)
    batches = Batches(x, y, batch_size=3, seed=1)
    assert len(batches) == 4
    epoch0 = [b[1].tolist() for b in batches.epoch(0)]
    assert sorted(functools.reduce(operator.iadd, epoch0, [])) == list(range(10))
    assert epoch0 == [b[1].tolist() for b in batches.epoch(0)]
    assert epoch0 != [b[1].tolist() for b in batches.epoch(1)]
    assert [b[1].tolist() for b in batches.epoch(0, skip=2)] == epoch0[2:]
