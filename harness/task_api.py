"""The contract every task follows: a length-parameterised, explicitly seeded batch generator
plus its loss, score, chance score and memoryless loss.

Tasks never touch global random state: every batch is drawn from the ``torch.Generator`` passed
in, on the device the model trains on.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from harness.errors import HarnessError


@dataclass
class Batch:
    """Inputs ``(batch, length, input_size)`` and targets; ``mask`` marks the scored positions
    of per-position targets (``None`` for tasks scored at the last step only)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.inputs.shape[0]


class Task(ABC):
    """Base class for tasks. Subclasses set the class attributes and implement the abstract methods."""

    name: ClassVar[str]
    #: Input features per step and model outputs per scored position: class attributes, or set per
    #: instance in ``__init__`` (e.g. from a vocabulary-size option); the harness reads the built task.
    input_size: int
    output_size: int
    readout: ClassVar[str]  # "sequence": outputs (batch, length, output_size); "last": (batch, output_size)
    #: The sweep ``harness run`` uses when no ``--lengths`` are given, and its training budget:
    #: sized so that a first run finishes in minutes on a laptop CPU and still shows scores falling.
    default_lengths: ClassVar[tuple[int, ...]] = (5, 10, 20, 40)
    default_steps: ClassVar[int] = 1000
    #: The Adam learning rate used when ``--lr`` is not given: a task on which every model learns
    #: slowly at the usual 1e-3 may declare another, measured, rate (the adding problem: 1e-2).
    default_lr: ClassVar[float] = 1e-3
    min_length: ClassVar[int] = 1
    length: int  # the dependency length T this task was built for
    #: What counts as remembering at a length (``harness horizon``, horizons in reports): see
    #: ``harness.analysis.criteria``. The default, a score 90 % of the way from chance to perfect,
    #: suits any task with a score and a chance level; regression tasks may prefer ``loss:0.1``.
    horizon_criterion: ClassVar[str] = "normalised:0.9"
    #: True when the information a trial needs sits at distance 0 for a model that reads the sequence
    #: backwards (e.g. a key at the first step), so a bidirectional model's horizon is unbounded by
    #: construction: reports flag such results instead of ranking them.
    bidirectional_shortcut: ClassVar[bool] = False

    def __init__(self, length: int) -> None:
        if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < self.min_length:
            raise HarnessError(f"task '{self.name}': dependency length must be an integer "
                               f">= {self.min_length}, got {length!r}")
        self.length = int(length)

    @property
    @abstractmethod
    def sequence_length(self) -> int:
        """Number of time steps of a generated input sequence."""

    @abstractmethod
    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Draw a batch on ``generator.device`` using only ``generator`` for randomness."""

    @abstractmethod
    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Mean training loss (a scalar tensor)."""

    @abstractmethod
    def score(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Mean score in [0, 1] (a scalar tensor)."""

    @property
    @abstractmethod
    def chance_score(self) -> float:
        """Expected score of the best predictor that ignores the inputs."""

    @property
    @abstractmethod
    def memoryless_loss(self) -> float:
        """Expected loss of the best predictor with no memory of earlier inputs."""

    @abstractmethod
    def memoryless_outputs(self, batch: Batch) -> torch.Tensor:
        """Outputs of the optimal memoryless predictor, so that its loss can be checked empirically."""

    def describe(self) -> dict[str, object]:
        """The task's facts at its length, for people and tools; the result rows record the same facts
        from the attributes (``describe`` itself is not called by the harness)."""
        return {
            "task": self.name,
            "length": self.length,
            "sequence_length": self.sequence_length,
            "chance_score": self.chance_score,
            "memoryless_loss": self.memoryless_loss,
        }
