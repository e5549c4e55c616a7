"""Checkpoints: the step file first, then latest.json naming it with its sha256 (the commit)."""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
from typing import Any

import torch

from shared.schemas import CheckpointManifest, CheckpointRef
from shared.storage import ArtifactNotFound, ArtifactStore, JobKeys

log = logging.getLogger(__name__)

KEEP_HISTORY = 3


def to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def snapshot(obj: Any) -> Any:
    """`obj` with every tensor replaced by a detached copy in host memory: a memcpy (or one
    device-to-host copy) on the training thread, after which training may change the originals
    while a background thread serialises and uploads the copy."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(snapshot(v) for v in obj)
    return obj  # numbers, strings, None: immutable


def serialize(obj: Any) -> tuple[bytes, str]:
    """(torch.save bytes, their sha256): the file and the digest its manifest commits."""
    data = to_bytes(obj)
    return data, hashlib.sha256(data).hexdigest()


def from_bytes(data: bytes) -> Any:
    # weights_only: a checkpoint is data, never code, whoever wrote it.
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def save(
    store: ArtifactStore, keys: JobKeys, step: int, epoch: int, state: dict[str, Any]
) -> CheckpointManifest:
    """Write step-N.pt, then commit it by rewriting latest.json."""
    return save_bytes(store, keys, step, epoch, to_bytes(state))


def save_bytes(
    store: ArtifactStore,
    keys: JobKeys,
    step: int,
    epoch: int,
    data: bytes,
    sha256: str | None = None,
) -> CheckpointManifest:
    """save() for a state already serialised (and maybe hashed)."""
    ref = CheckpointRef(
        key=keys.checkpoint(step),
        step=step,
        epoch=epoch,
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
        size=len(data),
    )
    store.put_bytes(ref.key, data)
    previous = read_manifest(store, keys)
    history: list[CheckpointRef] = []
    if previous is not None and previous.key != ref.key:
        history = [CheckpointRef(**previous.model_dump(exclude={"history"})), *previous.history]
    manifest = CheckpointManifest(**ref.model_dump(), history=history[:KEEP_HISTORY])
    store.put_bytes(keys.manifest, manifest.model_dump_json(indent=2).encode(), "application/json")
    return manifest


def read_manifest(store: ArtifactStore, keys: JobKeys) -> CheckpointManifest | None:
    try:
        return CheckpointManifest.model_validate_json(store.get_bytes(keys.manifest))
    except ArtifactNotFound:
        return None


def load_latest(store: ArtifactStore, keys: JobKeys) -> tuple[CheckpointRef, dict[str, Any]] | None:
    """The newest checkpoint whose bytes match its sha256, falling back through the history."""
    manifest = read_manifest(store, keys)
    if manifest is None:
        return None
    for ref in [CheckpointRef(**manifest.model_dump(exclude={"history"})), *manifest.history]:
        try:
            data = store.get_bytes(ref.key)
        except ArtifactNotFound:
            log.warning("checkpoint %s is missing; trying an older one", ref.key)
            continue
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            log.warning("checkpoint %s does not match its sha256; trying an older one", ref.key)
            continue
        try:
            return ref, from_bytes(data)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
            # weights_only refuses code (e.g. a malicious pickle): never load it, fall back.
            log.error("checkpoint %s refused by torch.load(weights_only=True): %s", ref.key, exc)
    return None
