"""GAN sample quality, the best checkpoint and training health, over the real stack: the API,
a Celery worker, Redis and SeaweedFS (docs/quality.md)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch

from shared.config import Settings
from shared.schemas import JobSummary
from shared.status import JobStatus
from shared.storage import S3ArtifactStore
from trainyard.client import Client

# A short default-recipe GAN: scored at steps 50, 100 and 150.
SHORT_GAN: dict[str, Any] = {
    "task": "gan",
    "model": "conv_gan",
    "dataset": "mnist-5k",
    "max_steps": 150,
    "sample_every": 50,
    "checkpoint_every": 50,
}


def quality_events(client: Client, job_id: str) -> list[Any]:
    return client.metrics(job_id, kind="quality")


def test_a_gan_is_scored_improves_and_keeps_its_best_checkpoint(
    client: Client, tmp_path: Path
) -> None:
    job = client.wait(client.submit(SHORT_GAN).id, timeout=600)
    assert job.status is JobStatus.SUCCEEDED, job.error
    events = quality_events(client, job.id)
    assert [e.step for e in events] == [50, 100, 150]
    for event in events:
        assert event.info["metric"] == "fd"
        for name in ("fd", "confident", "confident_real", "class_entropy", "fd_floor"):
            assert math.isfinite(event.metrics[name]), (name, event.metrics)
        assert 0 <= event.metrics["confident"] <= 1
        assert 0 <= event.metrics["class_entropy"] <= math.log(10) + 1e-6
    fd = [e.metrics["fd"] for e in events]
    assert fd[-1] < fd[0], f"the FD did not improve from its first value: {fd}"

    summary = JobSummary.model_validate(job.result)
    assert summary.best is not None
    assert summary.best.metric == "fd"
    assert summary.best.step == events[fd.index(min(fd))].step
    assert summary.best.value == pytest.approx(min(fd))
    assert events[-1].info["best_step"] == summary.best.step
    assert summary.metrics["fd"] == pytest.approx(fd[-1])

    client.download(job.id, tmp_path)
    best = torch.load(tmp_path / "final" / "best.pt", weights_only=True)
    final = torch.load(tmp_path / "final" / "model.pt", weights_only=True)
    assert best["best"]["step"] == summary.best.step
    assert best["state_dict"].keys() == final["state_dict"].keys()


def test_a_cgan_reports_agreement_with_the_requested_label(client: Client) -> None:
    spec = {**SHORT_GAN, "task": "cgan", "model": "conv_cgan", "max_steps": 50}
    job = client.wait(client.submit(spec).id, timeout=600)
    assert job.status is JobStatus.SUCCEEDED, job.error
    (event,) = quality_events(client, job.id)
    assert 0 <= event.metrics["label_agreement"] <= 1


def test_a_saturating_gan_succeeds_with_a_warning(client: Client) -> None:
    """lr 1.0 breaks the GAN at once: with its seed (0, and each draw from the job's own
    generator) G collapses onto one image, and the job succeeds with that health warning.
    (D winning outright, the other warning, is unit-tested: tests/unit/test_quality.py.)"""
    spec = {**SHORT_GAN, "lr": 1.0, "max_steps": 40, "log_every": 1, "sample_every": 40}
    job = client.wait(client.submit(spec).id, timeout=600)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert [w.code for w in job.warnings] == ["mode_collapse"], job.warnings
    assert "mode collapse" in job.warnings[0].message
    (event,) = client.metrics(job.id, kind="warning")
    assert event.info["code"] == "mode_collapse"
    assert event.step == job.warnings[0].step
    summary = JobSummary.model_validate(job.result)
    assert [w.code for w in summary.warnings] == ["mode_collapse"]


def random_inception_weights() -> bytes:
    """A state dict in the format of the FID Inception-v3 weights file (torch-fidelity's),
    holding random weights: the real file cannot be had here."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    with (
        mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}),
        mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda *a: None),
    ):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return buf.getvalue()


def test_an_unlabelled_data_set_gets_fid_once_the_inception_weights_are_stored(
    client: Client, s3: S3ArtifactStore, tmp_path: Path
) -> None:
    images = np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "blobs.npz", x=images)
    dataset = client.upload_dataset(tmp_path / "blobs.npz")
    assert dataset.num_classes == 0
    spec = {"task": "gan", "dataset": dataset.id, "max_steps": 10, "sample_every": 10}

    skipped = client.wait(client.submit(spec).id, timeout=600)
    assert skipped.status is JobStatus.SUCCEEDED, skipped.error
    note = JobSummary.model_validate(skipped.result).quality_note
    assert note is not None and "no FID Inception-v3 weights" in note
    logs = [e.info for e in client.metrics(skipped.id, kind="log")]
    assert any(info.get("quality_skipped") == note for info in logs)
    assert quality_events(client, skipped.id) == []

    s3.put_bytes(Settings().QUALITY_INCEPTION_KEY, random_inception_weights())
    scored = client.wait(client.submit(spec).id, timeout=600)
    assert scored.status is JobStatus.SUCCEEDED, scored.error
    (event,) = quality_events(client, scored.id)
    assert event.info["metric"] == "fid"
    assert math.isfinite(event.metrics["fid"])
    assert "confident" not in event.metrics  # no reference classifier without labels
