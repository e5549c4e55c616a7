"""The opt-in speed flags of a job spec (amp, channels_last, compile), decided in one place.

A recipe keeps its plain nn.Module for everything that is not a training forward pass:
parameters and optimisers, state_dict (checkpoints, final model), evaluation and sample grids.
Its training forward passes go through `training_forward(module)`, the one callable that knows
the flags. With every flag off that callable is the module itself: nothing changes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from shared.schemas import SPEED_FLAGS, JobSpec

Forward = Callable[..., Tensor]


def plain(spec: JobSpec) -> JobSpec:
    """`spec` with every speed flag off."""
    return spec.model_copy(update=dict.fromkeys(SPEED_FLAGS, False))


def training_forward(spec: JobSpec, module: nn.Module, device: torch.device) -> Forward:
    """Set `module` up for the spec's flags and return what its training forward passes call.

    Call it before building the module's optimiser. The module is changed in place only in
    ways that keep its parameters and state_dict keys: checkpoints stay interchangeable
    between runs with and without the flags, so a job can resume either way."""
    if not spec.speed_flags():
        return module
    if spec.channels_last:
        # Converts the 4-D weights (convs) in place; 2-D ones (Linear) have no such format.
        module.to(memory_format=torch.channels_last)
    if spec.amp:
        _check_bf16(device)
        # Sigmoid outputs feed BCELoss. In bf16 they round to exactly 1.0 above ~0.998, where
        # log(1 - p) and Sigmoid's gradient p(1 - p) vanish: keep the Sigmoids in float32.
        for sigmoid in (m for m in module.modules() if isinstance(m, nn.Sigmoid)):
            sigmoid.register_forward_pre_hook(_to_float)
    # Compile a wrapper, never replace the module: the compiled module's state_dict keys start
    # with "_orig_mod.", which checkpoints of eager runs do not have.
    call = torch.compile(module) if spec.compile else module
    return _SpeedForward(call, device.type, amp=spec.amp, channels_last=spec.channels_last)


class _SpeedForward:
    """Calls a (compiled) module with channels_last image batches under bf16 autocast, and
    returns float32: losses are computed outside autocast (BCELoss refuses it)."""

    def __init__(self, call: Forward, device_type: str, amp: bool, channels_last: bool) -> None:
        self.call, self.device_type = call, device_type
        self.amp, self.channels_last = amp, channels_last

    def __call__(self, *inputs: Tensor) -> Tensor:
        if self.channels_last:
            inputs = tuple(_channels_last(x) for x in inputs)
        # bf16 has float32's exponent range: no overflow, so no GradScaler.
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.amp):
            out = self.call(*inputs)
        return out.float()


def _check_bf16(device: torch.device) -> None:
    """amp trains in bf16 (no GradScaler). GPUs before Ampere have no bf16 units: say so at the
    start (the job fails with this message) instead of failing, or crawling, at the first step."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        name = torch.cuda.get_device_name(device)
        raise ValueError(
            f"amp trains in bf16, which this GPU ({name}) does not support (it needs compute "
            "capability 8.0 or newer); submit the job without amp"
        )


def _channels_last(x: Tensor) -> Tensor:
    """Image batches (N, C, H, W) to channels_last; anything else (seeds, labels) as it is."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _to_float(_module: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(x.float() if isinstance(x, Tensor) else x for x in inputs)
