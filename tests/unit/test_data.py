from __future__ import annotations

import torch

from workers.trainer.data import Batches, Prepare, clear_cache, load_dataset


def test_mnist_5k_split_is_fixed_balanced_and_disjoint() -> None:
    data = load_dataset("mnist-5k")
    assert data.train_x.shape == (4000, 1, 28, 28) and data.test_x.shape == (1000, 1, 28, 28)
    assert data.train_x.dtype == torch.uint8 and int(data.train_x.max()) == 255
    assert torch.bincount(data.train_y).tolist() == [400] * 10
    assert torch.bincount(data.test_y).tolist() == [100] * 10
    train = {tuple(row.tolist()) for row in data.train_x.view(4000, -1)[:500]}
    test = {tuple(row.tolist()) for row in data.test_x.view(1000, -1)}
    assert not train & test
    clear_cache()
    again = load_dataset("mnist-5k")
    assert torch.equal(again.test_x, data.test_x) and torch.equal(again.train_y, data.train_y)


def test_batches_are_seeded_per_epoch_and_skippable() -> None:
    x, y = torch.arange(10).float().view(10, 1), torch.arange(10)
    batches = Batches(x, y, batch_size=3, seed=1)
    assert len(batches) == 4
    epoch0 = [b[1].tolist() for b in batches.epoch(0)]
    assert sorted(i for batch in epoch0 for i in batch) == list(range(10))
    assert epoch0 == [b[1].tolist() for b in batches.epoch(0)]
    assert epoch0 != [b[1].tolist() for b in batches.epoch(1)]
    assert [b[1].tolist() for b in batches.epoch(0, skip=2)] == epoch0[2:]


def test_prepare_scales_crops_resizes_and_makes_rgb() -> None:
    x = torch.randint(0, 256, (2, 1, 218, 178), dtype=torch.uint8)
    out = Prepare(crop=(128, 128), resize=None, channels=3)(x)
    assert out.shape == (2, 3, 128, 128) and out.dtype == torch.float32
    # the book's CelebA crop: the centre 128x128 of 218x178
    assert torch.allclose(out[:, 0], x[:, 0, 45:173, 25:153].float() / 255)
    assert torch.equal(out[:, 0], out[:, 2])
    up = Prepare(crop=None, resize=(128, 128), channels=None)(x[:, :, :28, :28])
    assert up.shape == (2, 1, 128, 128) and up.min() >= 0 and up.max() <= 1
    same = Prepare(None, None, None)(x)
    assert torch.equal(same, x.float() / 255)


def test_dataset_cache_is_bounded_by_bytes_and_evicts_least_recently_used() -> None:
    from workers.trainer.data import cached, nbytes

    clear_cache()
    mnist, fake = load_dataset("mnist-5k"), load_dataset("fake")
    both = nbytes(mnist) + nbytes(fake)
    clear_cache()
    load_dataset("mnist-5k", cache_bytes=both)
    load_dataset("fake", cache_bytes=both)
    assert cached() == ["mnist-5k", "fake"]
    load_dataset("mnist-5k", cache_bytes=both)  # used again: now the most recent
    assert cached() == ["fake", "mnist-5k"]
    # A bound that holds one of them: the least recently used goes.
    clear_cache()
    one = max(nbytes(mnist), nbytes(fake))
    load_dataset("mnist-5k", cache_bytes=one)
    load_dataset("fake", cache_bytes=one)
    assert cached() == ["fake"]
    # A set larger than the whole bound is returned but not kept.
    clear_cache()
    assert load_dataset("mnist-5k", cache_bytes=nbytes(mnist) - 1).train_x.shape[0] == 4000
    assert cached() == []
    clear_cache()
