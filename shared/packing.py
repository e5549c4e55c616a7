"""Which training jobs can share a pack: one worker process training several trials of a sweep
as one fused model array (workers/trainer/pack.py, docs/packing.md). Torch-free: the API and
the sweep scheduler group trials by `pack_key` before anything is queued."""

from __future__ import annotations

import json
from typing import Any

from shared.schemas import JobSpec

# What must be equal for trials to share a pack: the same model array over batches of the
# same shape, on the same device.
SHAPE_FIELDS = ("task", "model", "mode", "dataset", "batch_size", "crop", "resize", "device")
# What each trial of a pack keeps for itself: its optimiser hyperparameters, its randomness,
# its length and cadences, its label. Fields a spec does not have are skipped, so a field
# added later (betas, label smoothing) joins this list to vary in a pack; until then, any
# field named in neither list is part of the key (unknown: never mixed). Whatever a module
# holds as an attribute (an activation's slope) must stay in the key: the fused step runs
# every trial through the first trial's module with the others' tensors.
PER_TRIAL_FIELDS = frozenset(
    {
        "name",
        "lr",
        "betas",
        "real_label",
        "label_smoothing",
        "seed",
        "epochs",
        "max_steps",
        "log_every",
        "checkpoint_every",
        "sample_every",
    }
)
# Set on a spec, these make it unpackable: the fused step runs float32 and eager, one batch
# per step, and book mode is the book's own recipe (batch 1), trained alone.
UNPACKABLE_FLAGS = ("amp", "channels_last", "compile")


def pack_key(spec: JobSpec) -> str | None:
    """A string equal for specs that can be trained in one pack, or None if `spec` is never
    packed (book mode, a micro-batch, a speed flag)."""
    if spec.mode == "book":
        return None
    if getattr(spec, "micro_batch", None) or getattr(spec, "micro_batch_size", None):
        return None
    if any(getattr(spec, flag, False) for flag in UNPACKABLE_FLAGS):
        return None
    fields = spec.model_dump(mode="json")
    key: dict[str, Any] = {name: fields.get(name) for name in SHAPE_FIELDS}
    key["crop"], key["resize"] = spec.crop_hw(), spec.resize_hw()  # 28 and [28, 28] are one
    for name, value in sorted(fields.items()):
        if name not in SHAPE_FIELDS and name not in PER_TRIAL_FIELDS:
            key[name] = value  # activation, and whatever is added to specs later
    return json.dumps(key, sort_keys=True, separators=(",", ":"))
