"""Parameter matching: the hidden size that gives a model a parameter count closest to a target.

Models are built on PyTorch's ``meta`` device, which records shapes without allocating memory, so
any model (built-in or third-party) can be sized in milliseconds. What is counted is what the
``params`` column reports: every trainable parameter of the recurrent core *and* of the linear
head the harness adds for the task (whose size depends on the core's output size).
"""

from __future__ import annotations

import json
from typing import Any

from harness.errors import HarnessError
from harness.registry.entries import Entry

MAX_HIDDEN = 1 << 16


def parameter_count(model: Entry, options: dict[str, Any], input_size: int, output_size: int, readout: str,
                    hidden_size: int, length: int | None = None) -> int:
    """Trainable parameters of the model with the task head, built without allocating weights."""
    import torch

    from harness.model_api import TaskModel, count_parameters
    from harness.runs.options import build_core

    try:
        with torch.device("meta"):
            core = build_core(model, input_size, hidden_size, length, options)
            return count_parameters(TaskModel(core, output_size, readout))
    except Exception:  # some initialisations cannot run on meta tensors: build it for real
        core = build_core(model, input_size, hidden_size, length, options)
        return count_parameters(TaskModel(core, output_size, readout))


def matched_hidden_size(model: Entry, model_options: dict[str, Any], task: Entry, task_options: dict[str, Any],
                        length: int, target: int) -> int:
    """The hidden size H whose parameter count is closest to ``target`` (the smaller H on a tie)."""
    built = task.build(length=length, **task_options)
    key = (model.name, model.plugin, model.target_name, json.dumps(model_options, sort_keys=True, default=str),
           built.input_size, built.output_size, built.readout, target)
    if key not in _CACHE:
        _CACHE[key] = _search(model, model_options, built.input_size, built.output_size, built.readout, target,
                              length)
    return _CACHE[key]


_CACHE: dict[tuple, int] = {}


def _search(model: Entry, options: dict[str, Any], input_size: int, output_size: int, readout: str,
            target: int, length: int) -> int:
    def count(hidden: int) -> int:
        return parameter_count(model, options, input_size, output_size, readout, hidden, length)

    low, high = 1, 2
    while count(high) < target:  # grow until the count passes the target
        low, high = high, high * 2
        if high > MAX_HIDDEN:
            raise HarnessError(f"--params {target}: model '{model.name}' stays below it up to H = {MAX_HIDDEN}")
    while high - low > 1:  # the largest H with count <= target lies in [low, high)
        middle = (low + high) // 2
        if count(middle) <= target:
            low = middle
        else:
            high = middle
    if count(low) > target:
        return low  # even H = 1 is above the target: the smallest model there is
    return low if target - count(low) <= count(high) - target else high
