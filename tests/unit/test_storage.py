from __future__ import annotations

from pathlib import Path

import pytest

from shared.storage import JobKeys, LocalArtifactStore


def test_key_layout() -> None:
    keys = JobKeys("abc123")
    assert keys.prefix == "jobs/abc123/"
    assert keys.checkpoint(42) == "jobs/abc123/checkpoints/step-00000042.pt"
    assert keys.manifest == "jobs/abc123/checkpoints/latest.json"
    assert keys.sample(7) == "jobs/abc123/samples/step-00000007.png"
    assert keys.final_model == "jobs/abc123/final/model.pt"
    assert keys.summary == "jobs/abc123/summary.json"
    assert keys.memory == "jobs/abc123/memory.json"


def test_step_keys_sort_by_step() -> None:
    keys = JobKeys("j")
    steps = [1, 9, 10, 100, 99_999]
    assert sorted(keys.checkpoint(s) for s in steps) == [keys.checkpoint(s) for s in steps]


def test_local_store_refuses_keys_outside_its_root(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    with pytest.raises(ValueError):
        store.put_bytes("../escape", b"x")


def test_s3_store_retries_then_fails_clearly() -> None:
    """A real client against a port nobody listens on: retried for the budget, then a clear
    StorageUnavailable naming the operation (the job fails with that message)."""
    import socket
    import time

    from shared.config import Settings
    from shared.storage import S3ArtifactStore, StorageUnavailable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(_env_file=None, S3_ENDPOINT=f"127.0.0.1:{port}")
    store = S3ArtifactStore.from_settings(settings, retry_s=1.0)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match=r"unreachable for 1s \(PUT jobs/x/y\)"):
        store.put_bytes("jobs/x/y", b"data")
    assert time.monotonic() - started >= 1.0
