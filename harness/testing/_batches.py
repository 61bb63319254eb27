"""Validating and comparing the batches a task samples, for the task checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from harness.testing._common import fail, shape_of


def same_batch(a: Any, b: Any) -> bool:
    """Whether two batches hold equal inputs, targets and masks."""
    pairs = [(a.inputs, b.inputs), (a.targets, b.targets)]
    if a.mask is not None or b.mask is not None:
        if a.mask is None or b.mask is None:
            return False
        pairs.append((a.mask, b.mask))
    return all(x.shape == y.shape and torch.equal(x, y) for x, y in pairs)


def perfect_outputs(batch: Any, shape: Sequence[int]) -> torch.Tensor:
    """Outputs that predict the targets exactly (large logits on the target class for class targets)."""
    targets = batch.targets
    if targets.is_floating_point():
        return targets.reshape(shape).clone()
    logits = torch.nn.functional.one_hot(targets.clamp(min=0), shape[-1]).float() * 30.0
    return logits.reshape(shape)


def check_batch(label: str, task: Any, batch: Any, n: int, device: torch.device) -> None:
    """Fail unless ``batch`` is what ``task.sample(n, generator)`` must return on ``device``."""
    for attr in ("inputs", "targets", "mask"):
        if not hasattr(batch, attr):
            fail(label, f"sample() must return a harness.task_api.Batch (inputs, targets, mask), "
                        f"got {type(batch).__name__} without '{attr}'")
    _check_inputs(label, task, batch.inputs, n)
    position_shape = (n, task.sequence_length) if task.readout == "sequence" else (n,)
    _check_targets(label, task, batch.targets, position_shape)
    _check_mask(label, batch.mask, position_shape)
    targets, mask = batch.targets, batch.mask
    if not targets.is_floating_point():
        scored = targets[mask] if mask is not None else targets
        if scored.numel() and (scored.min() < 0 or scored.max() >= task.output_size):
            fail(label, f"class targets at scored positions must lie in [0, output_size) = "
                        f"[0, {task.output_size}), found {int(scored.min())}..{int(scored.max())}")
    for name, t in (("inputs", batch.inputs), ("targets", targets), ("mask", mask)):
        if t is not None and t.device != device:
            fail(label, f"{name} are on {t.device}, not on the generator's device {device}")


def _check_inputs(label: str, task: Any, inputs: Any, n: int) -> None:
    expected = (n, task.sequence_length, task.input_size)
    if not isinstance(inputs, torch.Tensor) or tuple(inputs.shape) != expected:
        fail(label, f"sample({n}, generator) returned inputs of shape {shape_of(inputs)}; expected "
                    f"(batch, sequence_length, input_size) = {expected}")
    if inputs.dtype != torch.float32:
        fail(label, f"inputs must be float32, got {inputs.dtype}")
    if not torch.isfinite(inputs).all():
        fail(label, "inputs contain non-finite values")


def _check_targets(label: str, task: Any, targets: Any, position_shape: tuple[int, ...]) -> None:
    if not isinstance(targets, torch.Tensor):
        fail(label, f"targets must be a tensor, got {type(targets).__name__}")
    if targets.is_floating_point():
        allowed = [position_shape + (task.output_size,)] + ([position_shape] if task.output_size == 1 else [])
        if tuple(targets.shape) not in allowed:
            fail(label, f"real-valued targets must have shape {' or '.join(map(str, allowed))}, "
                        f"got {shape_of(targets)}")
        if targets.dtype != torch.float32 or not torch.isfinite(targets).all():
            fail(label, f"real-valued targets must be finite float32, got {targets.dtype}")
    elif targets.dtype != torch.long or tuple(targets.shape) != position_shape:
        per = "position" if len(position_shape) == 2 else "sequence"
        fail(label, f"class targets must be int64 of shape {position_shape} (one class index per "
                    f"{per}), got {targets.dtype} {shape_of(targets)}")


def _check_mask(label: str, mask: Any, position_shape: tuple[int, ...]) -> None:
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != position_shape:
        fail(label, f"mask must be None or a bool tensor of shape {position_shape}, got "
                    f"{getattr(mask, 'dtype', type(mask).__name__)} {shape_of(mask)}")
    if not mask.any():
        fail(label, "the mask marks no position as scored")
