"""The reference classifier, the quality meter and the monitor's health checks, on small
synthetic data and a folder store (docs/quality.md)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch

from shared.config import Settings
from shared.schemas import ClassifierSpec, GanSpec
from shared.storage import LocalArtifactStore
from workers.trainer import quality, reference
from workers.trainer.data import ImageData, Prepare, load_dataset
from workers.trainer.monitor import Diverged, FiniteGuard, Monitor, spread
from workers.trainer.recipes import GanRecipe, make_recipe
from workers.trainer.run import LocalRun, Run

CPU = torch.device("cpu")


def bars(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, 12, 12) uint8 images of a horizontal (class 0) or vertical (class 1) bar."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randint(0, 40, (n, 1, 12, 12), generator=gen, dtype=torch.uint8)
    at = torch.randint(2, 10, (n,), generator=gen)
    for i in range(n):
        if y[i] == 0:
            x[i, 0, at[i] : at[i] + 2, :] = 255
        else:
            x[i, 0, :, at[i] : at[i] + 2] = 255
    return x, y


@pytest.fixture(scope="module")
def data() -> ImageData:
    train_x, train_y = bars(400, 0)
    test_x, test_y = bars(100, 1)
    return ImageData("bars", train_x, train_y, test_x, test_y, ["h", "v"])


@pytest.fixture(scope="module")
def trained(data: ImageData) -> reference.Reference:
    return reference.train_reference(data)


def test_the_reference_learns_the_classes_and_leaves_the_global_rng_alone(
    data: ImageData,
) -> None:
    before = torch.get_rng_state()
    ref = reference.train_reference(data)
    assert torch.equal(torch.get_rng_state(), before)
    assert ref.test_accuracy >= 0.95
    assert 0.9 <= ref.confident_real <= 1.0


def test_the_reference_is_cached_in_the_store_and_loads_as_plain_weights(
    trained: reference.Reference, tmp_path: Path
) -> None:
    store = LocalArtifactStore(tmp_path)
    reference.save(trained, store, "ds-0123456789abcdef")
    assert store.exists("datasets/ds-0123456789abcdef/reference/classifier-v1.pt")
    loaded = reference.load(store, "ds-0123456789abcdef")  # torch.load(weights_only=True)
    assert loaded is not None
    assert loaded.test_accuracy == trained.test_accuracy
    x = torch.rand(5, 1, 12, 12)
    assert torch.allclose(loaded.probabilities(x), trained.probabilities(x))
    assert reference.load(store, "mnist-5k") is None


@pytest.mark.parametrize(
    "content",
    [b"not a torch file", b"PK\x03\x04truncated", "older"],
    ids=["garbage", "truncated-zip", "older-format"],
)
def test_an_unreadable_cached_reference_is_a_miss_not_a_crash(
    trained: reference.Reference, tmp_path: Path, content: bytes | str
) -> None:
    """A cached file that is not this version's reference (garbage, cut short, or an older
    layout without a field) is retrained instead of failing every job on the data set."""
    store = LocalArtifactStore(tmp_path)
    key = reference.reference_key("ds-0123456789abcdef")
    if content == "older":
        buf = io.BytesIO()
        torch.save({"channels": 1, "num_classes": 10, "state_dict": {}}, buf)  # no "side"
        content = buf.getvalue()
    assert isinstance(content, bytes)
    store.put_bytes(key, content)
    assert reference.load(store, "ds-0123456789abcdef") is None


def test_entropy_is_in_nats() -> None:
    assert reference.entropy(torch.tensor([5, 5])) == pytest.approx(math.log(2))
    assert reference.entropy(torch.tensor([10, 0, 0])) == 0.0
    assert reference.entropy(torch.tensor([1, 1, 1, 1])) == pytest.approx(math.log(4))


def _meter(
    data: ImageData, ref: reference.Reference, tmp_path: Path, conditional: bool = False
) -> quality.QualityMeter:
    store = LocalArtifactStore(tmp_path)
    reference.save(ref, store, data.name)
    reference._loaded.pop(data.name, None)
    settings = Settings(QUALITY_SAMPLES=100)
    return quality.meter_for(data, Prepare(None, None, None), conditional, store, settings, CPU, 0)


def test_real_images_score_like_real_images_and_noise_does_not(
    data: ImageData, trained: reference.Reference, tmp_path: Path
) -> None:
    meter = _meter(data, trained, tmp_path)
    real = data.test_x.float() / 255

    def copies(z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return real[: len(z)]

    def noise(z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return torch.rand(len(z), 1, 12, 12, generator=torch.Generator().manual_seed(1))

    good, bad = meter.score(copies), meter.score(noise)
    assert good["confident"] == pytest.approx(good["confident_real"])
    assert good["fd"] < 1e-3  # the same images as the real side
    assert bad["fd"] > 100 * max(good["fd"], good["fd_floor"] / 100)
    assert good["class_entropy"] == pytest.approx(math.log(2), abs=0.05)
    assert "label_agreement" not in good


def test_a_cgan_is_scored_on_agreement_with_the_requested_label(
    data: ImageData, trained: reference.Reference, tmp_path: Path
) -> None:
    meter = _meter(data, trained, tmp_path, conditional=True)
    by_class = [data.test_x[data.test_y == k].float() / 255 for k in range(2)]

    def obedient(z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        assert labels is not None
        return torch.stack([by_class[int(k)][i % 50] for i, k in enumerate(labels)])

    def contrary(z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        assert labels is not None
        return obedient(z, 1 - labels)

    assert meter.score(obedient)["label_agreement"] >= 0.95
    assert meter.score(contrary)["label_agreement"] <= 0.05


def test_no_inception_weights_means_no_fid_and_a_reason(tmp_path: Path) -> None:
    x = torch.zeros(10, 1, 28, 28, dtype=torch.uint8)
    unlabelled = ImageData("ds-x", x[:8], torch.zeros(8), x[8:], torch.zeros(2), [])
    settings = Settings(DATA_DIR=str(tmp_path / "data"), QUALITY_MIN_TEST=2)
    store = LocalArtifactStore(tmp_path / "store")
    with pytest.raises(quality.QualityUnavailable, match="TRAINYARD_QUALITY_INCEPTION_DOWNLOAD"):
        quality.meter_for(unlabelled, Prepare(None, None, None), False, store, settings, CPU, 0)
    store.put_bytes(settings.QUALITY_INCEPTION_KEY, b"import os  # not a state dict")
    with pytest.raises(quality.QualityUnavailable, match="not a plain state dict"):
        quality.meter_for(unlabelled, Prepare(None, None, None), False, store, settings, CPU, 0)
    # A plain state dict, but not Inception's: a reason, and no local copy kept.
    buf = io.BytesIO()
    torch.save({"a": torch.zeros(3)}, buf)
    store.put_bytes(settings.QUALITY_INCEPTION_KEY, buf.getvalue())
    with pytest.raises(quality.QualityUnavailable, match="not the FID Inception-v3 state dict"):
        quality.meter_for(unlabelled, Prepare(None, None, None), False, store, settings, CPU, 0)
    assert not (tmp_path / "data" / "models" / quality.INCEPTION_FILE).exists()


def test_the_finite_guard_names_the_first_bad_step_and_loss() -> None:
    guard = FiniteGuard(CPU)
    ok = {"d_loss": torch.tensor(0.5), "g_loss": torch.tensor(1.0)}
    for step in range(1, 5):
        guard.observe(step, ok)
    assert guard.first() is None
    guard.observe(5, {"d_loss": torch.tensor(0.5), "g_loss": torch.tensor(float("inf"))})
    guard.observe(6, {"d_loss": torch.tensor(float("nan")), "g_loss": torch.tensor(1.0)})
    assert guard.first() == (5, ["g_loss"])


def test_spread_is_zero_for_identical_images_and_grows_with_difference() -> None:
    same = torch.ones(8, 1, 4, 4)
    assert spread(same) == 0.0
    assert spread(torch.rand(8, 1, 4, 4)) > 0.5
    groups = torch.tensor([0, 0, 1, 1])
    images = torch.stack([torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), torch.ones(1, 2, 2)] * 1)
    assert spread(torch.cat([images, torch.ones(1, 1, 2, 2)]), groups) == 0.0


def _classifier_monitor(tmp_path: Path) -> tuple[Monitor, LocalRun]:
    spec = ClassifierSpec(dataset="fake", device="cpu")
    data = load_dataset("fake")
    run = Run.local(tmp_path)
    return Monitor(spec, make_recipe(spec, data, CPU), data, run, CPU, Settings()), run


def test_a_non_finite_loss_raises_diverged_naming_the_step(tmp_path: Path) -> None:
    monitor, run = _classifier_monitor(tmp_path)
    monitor.observe(1, {"loss": torch.tensor(0.3)})
    monitor.check()
    monitor.observe(2, {"loss": torch.tensor(float("nan"))})
    with pytest.raises(Diverged) as info:
        monitor.check()
    assert str(info.value) == (
        "diverged at step 2: non-finite loss; no checkpoint was written before it"
    )
    run.close()


def test_a_classifier_at_chance_is_warned_once_and_its_best_epoch_kept(tmp_path: Path) -> None:
    monitor, run = _classifier_monitor(tmp_path)
    monitor.evaluated(8, 0, {"test_accuracy": 0.30})
    monitor.evaluated(16, 1, {"test_accuracy": 0.12})  # before HEALTH_CHANCE_EPOCHS: no warning
    assert run.warnings == []
    monitor.evaluated(24, 2, {"test_accuracy": 0.11})
    monitor.evaluated(32, 3, {"test_accuracy": 0.10})
    assert [w.code for w in run.warnings] == ["chance_accuracy"]
    assert run.warnings[0].step == 24
    assert [e.info["code"] for e in run.events if e.kind == "warning"] == ["chance_accuracy"]
    assert monitor.best is not None and (monitor.best.step, monitor.best.value) == (8, 0.30)
    best = monitor.best_model()
    assert best is not None and best["best"]["metric"] == "test_accuracy"
    run.close()


def test_d_winning_outright_for_n_logs_is_warned(tmp_path: Path) -> None:
    spec = GanSpec(dataset="fake", device="cpu")
    data = load_dataset("fake")
    run = Run.local(tmp_path)
    settings = Settings(QUALITY=False, HEALTH_SATURATION_LOGS=3)
    monitor = Monitor(spec, make_recipe(spec, data, CPU), data, run, CPU, settings)
    assert monitor.quality_note is not None and "off" in monitor.quality_note
    saturated = {"d_fake": torch.tensor(1e-6), "g_loss": torch.tensor(100.0)}
    healthy = {"d_fake": torch.tensor(0.3), "g_loss": torch.tensor(1.2)}
    for step, losses in enumerate([saturated, saturated, healthy, saturated, saturated], 1):
        monitor.logged(step, 0, losses)
    assert run.warnings == []  # never 3 in a row
    monitor.logged(6, 0, saturated)
    assert [w.code for w in run.warnings] == ["d_wins"]
    assert run.warnings[0].step == 6
    run.close()


def test_near_identical_fixed_samples_are_warned_as_mode_collapse(tmp_path: Path) -> None:
    spec = GanSpec(dataset="fake", device="cpu")
    data = load_dataset("fake")
    run = Run.local(tmp_path)
    torch.manual_seed(0)
    recipe = make_recipe(spec, data, CPU)
    # An untrained G's samples differ 0.10-0.11x as much as fake's noise images do (seeds
    # 0-7): a threshold of 0.05 keeps this test off that edge.
    settings = Settings(QUALITY=False, HEALTH_COLLAPSE_RATIO=0.05)
    monitor = Monitor(spec, recipe, data, run, CPU, settings)
    monitor.score(10, 0)  # a fresh G: its samples differ
    assert run.warnings == []
    assert isinstance(recipe, GanRecipe)
    last = [m for m in recipe.sampler.modules() if isinstance(m, torch.nn.ConvTranspose2d)][-1]
    with torch.no_grad():
        last.weight.zero_()  # every seed now gives the same image: sigmoid(bias)
    monitor.score(20, 0)
    assert [w.code for w in run.warnings] == ["mode_collapse"]
    assert run.warnings[0].step == 20
    run.close()


def test_a_test_split_too_small_for_a_frechet_distance_is_not_scored(tmp_path: Path) -> None:
    x = torch.zeros(60, 1, 28, 28, dtype=torch.uint8)
    small = ImageData(
        "ds-y", x[:54], torch.arange(54) % 3, x[54:], torch.arange(6) % 3, list("abc")
    )
    store = LocalArtifactStore(tmp_path)
    with pytest.raises(quality.QualityUnavailable, match="test split has 6 images"):
        quality.meter_for(small, Prepare(None, None, None), True, store, Settings(), CPU, 0)


def test_the_reference_scores_resized_images_at_the_side_it_trained_on(
    data: ImageData, trained: reference.Reference
) -> None:
    """A job that resizes 12-pixel bars to 32 and to RGB is scored as its data set's images."""
    x = data.test_x.float() / 255
    bigger = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear").expand(
        -1, 3, -1, -1
    )
    assert trained.net.side == 12
    agree = (trained.probabilities(bigger).argmax(1) == data.test_y).float().mean()
    assert agree >= 0.9
