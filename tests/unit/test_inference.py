"""The inference worker's service without a stack: the model cache, sampling determinism,
probabilities, and answers from exports written as training writes them."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from torch import nn

from shared.config import Settings
from shared.schemas import CganSpec, ClassifierSpec, GanSpec, SampleRequest
from shared.state.inference import InferenceRequest
from shared.storage import JobKeys, LocalArtifactStore
from workers.inference.cache import ModelCache, module_bytes
from workers.inference.service import (
    InferenceService,
    generate,
    grid_png,
    sample_name,
    samples_npz,
)
from workers.trainer import checkpoint
from workers.trainer.models import build_gan, build_model

CPU = torch.device("cpu")


# --- ModelCache


def test_cache_is_bounded_by_bytes_and_evicts_the_least_recently_used() -> None:
    cache: ModelCache[str] = ModelCache(max_bytes=100)
    loads: list[str] = []

    def loader(name: str, size: int) -> Callable[[], tuple[str, int]]:
        def load() -> tuple[str, int]:
            loads.append(name)
            return name, size

        return load

    assert cache.get("a", loader("a", 40)) == "a"
    assert cache.get("b", loader("b", 40)) == "b"
    assert cache.get("a", loader("a", 40)) == "a"  # a hit: now the most recently used
    assert loads == ["a", "b"] and cache.keys() == ["b", "a"]
    cache.get("c", loader("c", 40))  # 120 > 100: b, the least recently used, goes
    assert cache.keys() == ["a", "c"] and cache.bytes == 80
    cache.get("b", loader("b", 40))  # loaded again; a goes
    assert loads == ["a", "b", "c", "b"] and cache.keys() == ["c", "b"]
    cache.get("big", loader("big", 101))  # over the whole budget: used, never kept
    assert cache.keys() == ["c", "b"] and cache.bytes == 80
    cache.get("d", loader("d", 100))  # exactly the budget: everything else goes
    assert cache.keys() == ["d"] and (cache.hits, cache.misses) == (1, 6)


def test_module_bytes_counts_parameters_and_buffers() -> None:
    module = nn.BatchNorm1d(4)  # weight, bias (float32), running mean/var, num_batches_tracked
    assert module_bytes(module) == 4 * 4 * 4 + 8


# --- exports as training writes them (workers/trainer/recipes.py export())


def _gan_export(store: LocalArtifactStore, job_id: str, conditional: bool) -> nn.Module:
    spec = CganSpec() if conditional else GanSpec()
    k = 10 if conditional else 0
    torch.manual_seed(1)
    discriminator, generator = build_gan(spec.model, (1, 28, 28), k)
    saved = {
        "model_name": spec.model,
        "state_dict": generator.state_dict(),
        "discriminator": discriminator.state_dict(),
        "spec": spec.model_dump(mode="json"),
        "latent_dim": 100,
        "image": [1, 28, 28],
        "clusters": 0,
        "num_classes": k,
        "classes": [str(i) for i in range(10)],
    }
    keys = JobKeys(job_id)
    store.put_bytes(keys.final_model, checkpoint.to_bytes(saved))
    # best.pt: other weights, from step 40; a checkpoint of step 20 with G and G_ema.
    torch.manual_seed(2)
    _, other = build_gan(spec.model, (1, 28, 28), k)
    best = {**saved, "state_dict": other.state_dict(), "best": {"step": 40}}
    store.put_bytes(keys.best_model, checkpoint.to_bytes(best))
    state = {"G": other.state_dict(), "G_ema": generator.state_dict(), "step": 20}
    store.put_bytes(keys.checkpoint(20), checkpoint.to_bytes(state))
    return generator.eval()


def _request(job_id: str, kind: str, **params: object) -> InferenceRequest:
    return InferenceRequest.model_validate(
        {"id": "0" * 32, "owner": "o", "job_id": job_id, "kind": kind, "params": params}
    )


def test_samples_are_reproducible_by_seed_and_stored_under_samples_on_demand(
    tmp_path: Path,
) -> None:
    store = LocalArtifactStore(tmp_path)
    generator = _gan_export(store, "g1", conditional=False)
    service = InferenceService(store, 2**30, CPU)
    params = {"n": 10, "labels": None, "seed": 7, "checkpoint": "final", "final_step": 99}
    first = service.answer(_request("g1", "samples", **params))
    assert first.status == 200 and first.result is not None
    result = first.result
    assert result["step"] == 99 and result["shape"] == [10, 1, 28, 28]
    assert result["images_key"].startswith("jobs/g1/samples-on-demand/final-step99-seed7-n10-")
    npz = store.get_bytes(result["images_key"])
    again = service.answer(_request("g1", "samples", **params)).result
    assert again is not None and again["images_key"] == result["images_key"]
    assert store.get_bytes(again["images_key"]) == npz  # the same bytes
    with np.load(io.BytesIO(npz)) as arrays:
        images, labels = arrays["images"], arrays["labels"]
    assert images.dtype == np.uint8 and images.shape == (10, 1, 28, 28)
    assert (labels == -1).all()
    # The images are the generator's on seeds from a CPU generator seeded by `seed`.
    z = torch.randn(10, 100, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = generator(z).mul(255).add(0.5).clamp(0, 255).to(torch.uint8).numpy()
    assert np.array_equal(images, expected)
    other = service.answer(_request("g1", "samples", **{**params, "seed": 8})).result
    assert other is not None and other["images_key"] != result["images_key"]
    assert store.get_bytes(other["images_key"]) != npz
    grid = Image.open(io.BytesIO(store.get_bytes(result["grid_key"])))
    assert grid.format == "PNG" and grid.size == (8 * 30 + 2, 2 * 30 + 2)


def test_checkpoints_best_and_step_use_their_own_weights(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    _gan_export(store, "c1", conditional=True)
    service = InferenceService(store, 2**30, CPU)
    base = {"n": 4, "labels": [3, 3, 3, 3], "seed": 0, "final_step": 99}
    final = service.sample("c1", checkpoint="final", **base)  # type: ignore[arg-type]
    best = service.sample("c1", checkpoint="best", **base)  # type: ignore[arg-type]
    step = service.sample("c1", checkpoint=20, **base)  # type: ignore[arg-type]
    assert (final["step"], best["step"], step["step"]) == (99, 40, 20)
    npz = {k: store.get_bytes(r["images_key"]) for k, r in (("f", final), ("b", best), ("s", step))}
    assert npz["f"] != npz["b"]
    with np.load(io.BytesIO(npz["f"])) as f, np.load(io.BytesIO(npz["s"])) as s:
        # step 20's G_ema is final's generator: the same images; labels stored as given
        assert np.array_equal(f["images"], s["images"]) and f["labels"].tolist() == [3] * 4
    missing = service.answer(_request("c1", "samples", **{**base, "checkpoint": 30}))
    assert (missing.status, missing.field) == (404, "checkpoint")
    assert len(service.models.keys()) == 3  # final, best, step 20


def test_generate_is_deterministic_and_labels_condition() -> None:
    _, generator = build_gan("conv_cgan", (1, 28, 28), 10)
    from workers.inference.service import Loaded

    loaded = Loaded("gan", generator.eval(), None, [], 10, 100, None)
    a = generate(loaded, 300, [1] * 300, 5, CPU)  # over one batch of 256
    assert torch.equal(a, generate(loaded, 300, [1] * 300, 5, CPU))
    assert not torch.equal(a, generate(loaded, 300, [2] * 300, 5, CPU))


def test_names_and_files_are_functions_of_the_request() -> None:
    assert sample_name("final", 9, 1, 4, None) == sample_name("final", 9, 1, 4, None)
    names = {
        sample_name("final", 9, 1, 4, None),
        sample_name("best", 9, 1, 4, None),
        sample_name(9, 9, 1, 4, None),
        sample_name("final", 9, 2, 4, None),
        sample_name("final", 9, 1, 4, [0, 0, 0, 0]),
    }
    assert len(names) == 5
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    assert samples_npz(images, [1, 2, 3]) == samples_npz(images.clone(), [1, 2, 3])
    assert grid_png(images) == grid_png(images.clone())


def test_predict_normalises_sigmoid_scores(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    spec = ClassifierSpec()
    model = build_model(spec.model)
    saved = {
        "model_name": spec.model,
        "state_dict": model.state_dict(),
        "spec": spec.model_dump(mode="json"),
        "classes": [f"c{i}" for i in range(10)],
    }
    store.put_bytes(JobKeys("k1").final_model, checkpoint.to_bytes(saved))
    service = InferenceService(store, 2**30, CPU)
    x = np.random.default_rng(0).integers(0, 256, (5, 1, 28, 28), dtype=np.uint8)
    out = service.predict("k1", x.tobytes(), [5, 1, 28, 28], "final", 7)
    probs = np.array(out["probabilities"])
    assert probs.shape == (5, 10) and np.allclose(probs.sum(1), 1)
    with torch.no_grad():
        scores = model.eval()(torch.from_numpy(x).float() / 255).numpy()
    assert out["predicted"] == scores.argmax(1).tolist() and out["step"] == 7
    assert out["predicted_class"] == [f"c{i}" for i in out["predicted"]]
    wrong = service.answer(_request("k1", "samples", n=1, labels=None, seed=0))
    assert (wrong.status, wrong.field) == (422, "job_id")


@pytest.mark.parametrize("payload", [b"garbage", b""])
def test_an_unreadable_export_is_a_500_with_the_reason(tmp_path: Path, payload: bytes) -> None:
    store = LocalArtifactStore(tmp_path)
    store.put_bytes(JobKeys("bad").final_model, payload)
    answer = InferenceService(store, 2**30, CPU).answer(
        _request("bad", "samples", n=1, labels=None, seed=0)
    )
    assert answer.status == 500 and "final/model.pt cannot be loaded" in (answer.message or "")


def test_an_inference_timeout_past_the_answers_lifetime_is_refused_at_start() -> None:
    """A request would expire (404) before it could time out (504): refused when read."""
    with pytest.raises(ValidationError, match="INFERENCE_TIMEOUT_S"):
        Settings(INFERENCE_TIMEOUT_S=600, INFERENCE_RESULT_TTL_S=600)
    assert Settings(INFERENCE_TIMEOUT_S=599, INFERENCE_RESULT_TTL_S=600).INFERENCE_TIMEOUT_S == 599
    with pytest.raises(ValidationError, match="checkpoint"):
        SampleRequest(checkpoint=10**12)  # the query string's bound (12 digits) in JSON too
