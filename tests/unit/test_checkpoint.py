from __future__ import annotations

from pathlib import Path

import torch

from shared.storage import JobKeys, LocalArtifactStore
from workers.trainer import checkpoint


def _state(value: float) -> dict[str, object]:
    return {"model": {"w": torch.full((3,), value)}, "step": int(value)}


def test_manifest_names_the_newest_checkpoint_with_its_hash(tmp_path: Path) -> None:
    store, keys = LocalArtifactStore(tmp_path), JobKeys("j")
    for step in (1, 2, 3, 4, 5):
        checkpoint.save(store, keys, step, 0, _state(step))
    manifest = checkpoint.read_manifest(store, keys)
    assert manifest is not None and manifest.step == 5 and manifest.key == keys.checkpoint(5)
    assert [h.step for h in manifest.history] == [4, 3, 2]
    found = checkpoint.load_latest(store, keys)
    assert found is not None and found[1]["step"] == 5


def test_corrupt_or_missing_newest_falls_back(tmp_path: Path) -> None:
    store, keys = LocalArtifactStore(tmp_path), JobKeys("j")
    for step in (1, 2, 3):
        checkpoint.save(store, keys, step, 0, _state(step))
    store.put_bytes(keys.checkpoint(3), b"garbage")  # torn write
    found = checkpoint.load_latest(store, keys)
    assert found is not None and found[0].step == 2
    (tmp_path / keys.checkpoint(2)).unlink()
    found = checkpoint.load_latest(store, keys)
    assert found is not None and found[0].step == 1


def test_no_manifest_means_fresh_start(tmp_path: Path) -> None:
    assert checkpoint.load_latest(LocalArtifactStore(tmp_path), JobKeys("new")) is None


class _Evil:
    """Unpickling this would run a shell command."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("touch /tmp/trainyard-pwned",))


def test_malicious_pickle_is_refused_and_never_run(tmp_path: Path) -> None:
    import hashlib
    import os

    store, keys = LocalArtifactStore(tmp_path), JobKeys("j")
    checkpoint.save(store, keys, 1, 0, _state(1))
    checkpoint.save(store, keys, 2, 0, {"model": _Evil()})  # a valid manifest names it
    manifest = checkpoint.read_manifest(store, keys)
    data = store.get_bytes(keys.checkpoint(2))
    assert manifest is not None and manifest.sha256 == hashlib.sha256(data).hexdigest()
    if os.path.exists("/tmp/trainyard-pwned"):
        os.remove("/tmp/trainyard-pwned")
    found = checkpoint.load_latest(store, keys)
    assert found is not None and found[0].step == 1  # fell back to the safe one
    assert not os.path.exists("/tmp/trainyard-pwned")


def test_a_checkpoint_is_the_state_when_it_was_taken_not_when_it_was_written(
    tmp_path: Path,
) -> None:
    """Serialising and uploading happen on background threads: training goes on changing the
    weights in place meanwhile, and the checkpoint must not see those changes."""
    import threading

    from workers.trainer.run import LocalRun

    weights = torch.zeros(1000)
    state = {"model": {"w": weights}, "opt": {"state": {0: {"m": weights * 0}}, "groups": [1]}}
    with LocalRun("j", LocalArtifactStore(tmp_path), writer_threads=2) as run:
        busy = threading.Event()
        assert run.serializer is not None
        run.serializer.submit(busy.wait)  # the serialiser is still on an earlier checkpoint
        run.checkpoint(1, 0, state)
        weights.add_(1.0)  # the next optimiser step, before this checkpoint is serialised
        busy.set()
        run.drain()
    found = checkpoint.load_latest(LocalArtifactStore(tmp_path), JobKeys("j"))
    assert found is not None
    assert torch.equal(found[1]["model"]["w"], torch.zeros(1000))
    assert found[1]["opt"]["groups"] == [1]


def test_one_writer_thread_serialises_on_the_uploader(tmp_path: Path) -> None:
    """A worker with a one-core share (cpu.py) runs one writer thread: no serialiser thread,
    and checkpoints still commit in order."""
    from workers.trainer.run import LocalRun

    with LocalRun("j", LocalArtifactStore(tmp_path), writer_threads=1) as run:
        assert run.serializer is None  # the uploader alone writes
        for step in (1, 2, 3):
            run.checkpoint(step, 0, {"w": torch.full((10,), float(step))})
        run.drain()
    found = checkpoint.load_latest(LocalArtifactStore(tmp_path), JobKeys("j"))
    assert found is not None and found[0].step == 3
    assert torch.equal(found[1]["w"], torch.full((10,), 3.0))


def test_snapshot_copies_tensors_and_keeps_structure() -> None:
    t = torch.ones(2, requires_grad=True)
    copy = checkpoint.snapshot({"a": [t, (t, 3)], "b": None})
    assert copy["a"][1][1] == 3 and copy["b"] is None and isinstance(copy["a"][1], tuple)
    assert copy["a"][0].data_ptr() != t.data_ptr() and not copy["a"][0].requires_grad
