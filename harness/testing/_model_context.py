"""What the model checks share: :class:`ModelContext`, the factory, the sizes and the models built
from it, so that every check module (``model_checks``, ``causality``, ``precision``, ``states``)
works from the same builds and inputs."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import nn

from harness.testing._common import fail, seed_everything, shape_of

Outputs = tuple[torch.Tensor, torch.Tensor]


@dataclass
class ModelContext:
    """What the model checks share: the factory, its arguments and the models built from it.

    ``model`` (the seed's build, validated) and ``reference`` (another seed build in eval mode
    with its outputs) are built once, on first use, so that a check selected alone builds only
    what it needs.
    """

    factory: Callable[..., Any]
    label: str
    input_size: int
    hidden_size: int
    options: dict[str, Any]
    device: str | None
    batch_size: int
    length: int
    seed: int
    long_length: int = 1000

    def build(self, seed: int, hidden: int | None = None) -> nn.Module:
        """A model built under ``seed`` as the harness builds one; fails if the factory fails."""
        hidden = self.hidden_size if hidden is None else hidden
        seed_everything(seed)
        try:
            built = self.factory(input_size=self.input_size, hidden_size=hidden, **self.options)
        except Exception as exc:
            arguments = ", ".join(f"{k}={v!r}" for k, v in
                                  {"input_size": self.input_size, "hidden_size": hidden, **self.options}.items())
            raise AssertionError(f"{self.label}: building it with {arguments} raised "
                                 f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(built, nn.Module):
            fail(self.label, f"the factory must return a torch.nn.Module, got {type(built).__name__}")
        return built

    @cached_property
    def model(self) -> nn.Module:
        """The seed's build, with a positive integer ``output_size``: what every check needs."""
        model = self.build(self.seed)
        out = getattr(model, "output_size", None)
        if isinstance(out, bool) or not isinstance(out, numbers.Integral) or out <= 0:
            fail(self.label, f"the model must have a positive integer attribute output_size (the feature "
                             f"size F), got {out!r}")
        return model

    @property
    def output_size(self) -> int:
        size: Any = self.model.output_size  # checked by the "build" check
        return int(size)

    @cached_property
    def reference(self) -> tuple[nn.Module, Outputs]:
        """A fresh seed build in eval mode and its outputs on the standard inputs: the model the
        dtype and device checks copy, and the outputs they must reproduce."""
        _ = self.model  # what every check needs, failing with the build check's messages
        module = self.build(self.seed).eval()
        with torch.no_grad():
            outputs = self.forward(module, self.inputs(self.batch_size, self.length), "seed build, eval mode")
        return module, outputs

    def inputs(self, batch: int, steps: int) -> torch.Tensor:
        """The same float32 CPU inputs for every call with the same shape."""
        return torch.randn(batch, steps, self.input_size, generator=torch.Generator().manual_seed(1))

    def forward(self, module: nn.Module, x: torch.Tensor, where: str) -> Outputs:
        """``module(x)``, failing unless it is a pair of tensors of the contract's shapes, dtype and device."""
        try:
            result = module(x)
        except Exception as exc:
            raise AssertionError(f"{self.label}: forward on inputs of shape {shape_of(x)} ({where}) raised "
                                 f"{type(exc).__name__}: {exc}") from exc
        if not (isinstance(result, (tuple, list)) and len(result) == 2
                and all(isinstance(t, torch.Tensor) for t in result)):
            got = (f"a {type(result).__name__} of {len(result)} items" if isinstance(result, (tuple, list))
                   else f"{type(result).__name__} {shape_of(result)}")
            fail(self.label, f"forward(x) must return a pair (features, summary) of tensors, got {got}")
        features, summary = result
        batch, steps = x.shape[:2]
        out = self.output_size
        if tuple(features.shape) != (batch, steps, out) or tuple(summary.shape) != (batch, out):
            fail(self.label, f"forward(x) with x of shape {shape_of(x)} (batch, length, input_size) must return "
                             f"features of shape (batch, length, output_size) = {(batch, steps, out)} and "
                             f"summary of shape (batch, output_size) = {(batch, out)}; got features "
                             f"{shape_of(features)} and summary {shape_of(summary)} ({where})")
        for name, t in (("features", features), ("summary", summary)):
            if t.dtype != x.dtype:
                fail(self.label, f"{name} must have the dtype of the inputs, {x.dtype}, got {t.dtype} ({where})")
            if t.device != x.device:
                fail(self.label, f"{name} must be on the inputs' device {x.device}, got {t.device} ({where})")
        return features, summary

    def forward_float64(self, module: nn.Module, x: torch.Tensor, where: str) -> Outputs:
        """:meth:`forward` for a float64 copy, failing with the dtype:float64 check's advice."""
        try:
            return self.forward(module, x, where)
        except AssertionError as exc:
            raise AssertionError(f"{exc}. After .double() the model must compute in float64: create new tensors "
                                 f"with the inputs' dtype and device, e.g. inputs.new_zeros(...)") from exc
