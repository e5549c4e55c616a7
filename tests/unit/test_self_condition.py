"""The self-conditioned conv_gan (issue 17): clusters of the train images stand in for labels,
G reads its cluster from the seed, D takes it by projection, and all of it survives a
checkpoint and an export."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
import torch
from torch.nn import functional as F

from shared.schemas import CganSpec, GanSpec
from workers.trainer import clusters
from workers.trainer.data import ImageData, Prepare, load_dataset
from workers.trainer.models import build_gan, generator_from_export
from workers.trainer.models.gans import ConvDiscriminator, SelfConditionedGenerator
from workers.trainer.recipes import FAST_TRICKS, NO_TRICKS, GanRecipe

CPU = torch.device("cpu")
PLAIN = Prepare(None, None, None)


@pytest.fixture(scope="module")
def data() -> ImageData:
    return load_dataset("mnist-5k")


def purity(found: torch.Tensor, truth: torch.Tensor) -> float:
    """The fraction of images whose cluster's most common true label is their own."""
    hits = sum(int(torch.bincount(truth[found == k]).max()) for k in found.unique().tolist())
    return hits / len(truth)


def test_clusters_follow_the_digits_without_labels_and_repeat_exactly(data: ImageData) -> None:
    first = clusters.cluster(data, PLAIN)
    assert first.k == clusters.CLUSTERS == 20
    assert first.train.shape == data.train_y.shape and first.test.shape == data.test_y.shape
    assert first.train.dtype == torch.int64 and int(first.train.max()) < first.k
    assert first.prior.sum().item() == pytest.approx(1.0)
    assert bool((first.prior > 0).all())
    # The clusters are not the labels, but they track them (k-means on pixels: about 0.55).
    assert purity(first.train, data.train_y) > 0.75
    assert purity(first.test, data.test_y) > 0.75
    again = clusters.cluster(data, PLAIN)
    assert torch.equal(first.train, again.train) and torch.equal(first.test, again.test)


def test_a_large_split_is_clustered_on_a_subset_and_every_image_gets_a_cluster(
    data: ImageData, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clusters, "FIT_AT_MOST", 800)
    found = clusters.cluster(data, PLAIN)
    assert found.train.shape == data.train_y.shape
    assert purity(found.train, data.train_y) > 0.6


def test_small_splits_get_fewer_clusters_and_tiny_ones_none() -> None:
    assert clusters.count_for(60_000) == 20
    assert clusters.count_for(100) == 5
    assert clusters.count_for(10) == 1
    x = torch.randint(0, 256, (30, 1, 28, 28), dtype=torch.uint8)
    y = torch.zeros(30, dtype=torch.int64)
    tiny = ImageData("tiny", x[:20], y[:20], x[20:], y[20:], [])
    found = clusters.cluster(tiny, PLAIN)
    assert found.k == 1 and torch.equal(found.train, torch.zeros(20, dtype=torch.int64))


def test_a_failed_clustering_trains_unconditioned_instead_of_failing(
    data: ImageData, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> None:
        raise ValueError("no eigenvectors")

    monkeypatch.setattr(clusters, "_spectral", broken)
    found = clusters.cluster(data, PLAIN)
    assert found.k == 1 and int(found.train.max()) == 0 and len(found.test) == len(data.test_y)


def test_the_generator_draws_clusters_as_often_as_the_train_split_holds_them() -> None:
    g = SelfConditionedGenerator(1, 28, 4)
    prior = torch.tensor([0.1, 0.4, 0.2, 0.3])
    g.set_prior(prior * 7)  # any scale: normalised
    z = torch.randn(200_000, 100, generator=torch.Generator().manual_seed(0))
    share = torch.bincount(g.cluster_of(z), minlength=4).float() / len(z)
    assert torch.allclose(share, prior, atol=0.005)
    g.eval()
    assert torch.equal(g(z[:5]), g(z[:5]))  # a function of the seed alone


def test_the_projection_discriminator_depends_on_the_condition() -> None:
    torch.manual_seed(0)
    d = ConvDiscriminator(1, 28, projection=5).eval()
    torch.nn.init.normal_(d.embed.weight)  # type: ignore[union-attr]
    x = torch.rand(3, 1, 28, 28)
    a = d(x, F.one_hot(torch.tensor([0, 0, 0]), 5).float())
    b = d(x, F.one_hot(torch.tensor([1, 1, 1]), 5).float())
    assert a.shape == (3, 1) and not torch.allclose(a, b)
    plain = ConvDiscriminator(1, 28)
    extra = sum(p.numel() for p in d.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 5 * 64 * 7 * 7  # the embedding only: no wider convolution


def test_fast_conv_gan_is_self_conditioned_and_nothing_else_is(data: ImageData) -> None:
    fast = GanRecipe(GanSpec(device="cpu", batch_size=16), data, CPU)
    assert fast.clusters is not None and torch.equal(fast.train_labels, fast.clusters.train)
    assert isinstance(fast.G, SelfConditionedGenerator)
    losses = fast.train_step(data.train_x[:16], fast.train_labels[:16])
    assert all(torch.isfinite(v) for v in losses.values())
    assert set(fast.evaluate()) == {"test_d_real", "test_d_fake"}
    off = GanRecipe(GanSpec(device="cpu"), data, CPU, tricks=NO_TRICKS)
    book = GanRecipe(GanSpec(mode="book", model="conv_gan", device="cpu"), data, CPU)
    cgan = GanRecipe(CganSpec(device="cpu"), data, CPU, tricks=FAST_TRICKS)
    for recipe in (off, book, cgan):
        assert recipe.clusters is None and recipe.train_labels is data.train_y


def test_clusters_ride_in_the_checkpoint_and_the_export_rebuilds_the_generator(
    data: ImageData,
) -> None:
    spec = GanSpec(device="cpu", batch_size=16)
    torch.manual_seed(0)
    one = GanRecipe(spec, data, CPU, tricks=replace(FAST_TRICKS, ema=0.0))
    one.train_step(data.train_x[:16], one.train_labels[:16])
    buf = io.BytesIO()
    torch.save(one.state_dict(), buf)
    saved = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)

    two = GanRecipe(spec, data, CPU, tricks=replace(FAST_TRICKS, ema=0.0))
    assert two.clusters is not None
    labels = two.train_labels  # the batches hold this very tensor
    labels.add_(1).remainder_(two.clusters.k)  # as if clustered differently on another machine
    two.load_state_dict(saved)
    assert two.train_labels is labels and torch.equal(labels, saved["clusters"]["train"])

    buf = io.BytesIO()
    torch.save(one.export(), buf)
    exported = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert exported["clusters"] == 20 and exported["image"] == [1, 28, 28]
    g = generator_from_export(exported)
    z = torch.randn(6, 100)
    assert torch.equal(g(z), one.generate(z))


def test_build_gan_without_clusters_is_the_plain_gan() -> None:
    d, g = build_gan("conv_gan", (1, 28, 28))
    assert not isinstance(g, SelfConditionedGenerator) and getattr(d, "embed", 0) is None
