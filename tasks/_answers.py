"""What selective copy and MQAR share: per-position classification scored at the last few steps.

Both tasks answer with one of ``output_size`` equally likely symbols at each of their last
``answers`` positions and ask nothing elsewhere, so the loss, the score and both baselines are
the same functions of those two numbers (docs/tasks.md#selective_copy, docs/tasks.md#mqar).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.task_api import Batch, Task


def check_count(task: str, option: str, value: object, minimum: int) -> int:
    """``value`` as an int, or a one-line HarnessError when it is not an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise HarnessError(f"task '{task}': {option} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class TailAnswers(Task):
    """A task whose targets are uniform classes at its last ``answers`` positions, scored only there.

    Subclasses set ``answers``, ``input_size`` and ``output_size`` (per instance: they follow the
    task's options) and implement ``sequence_length`` and ``sample``.
    """

    readout = "sequence"
    answers: int

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Cross-entropy over the answer positions only: nothing else has a target."""
        tail = outputs[:, -self.answers:]
        return F.cross_entropy(tail.reshape(-1, tail.shape[-1]), batch.targets[:, -self.answers:].reshape(-1))

    def score(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Accuracy over the answer positions."""
        answers = outputs[:, -self.answers:].argmax(-1)
        return (answers == batch.targets[:, -self.answers:]).float().mean()

    @property
    def chance_score(self) -> float:
        """Each answer is uniform over ``output_size`` symbols and independent of the inputs."""
        return 1.0 / self.output_size

    @property
    def memoryless_loss(self) -> float:
        """Without memory the query step says nothing about its answer: the uniform guess, ln(classes)."""
        return math.log(self.output_size)

    def memoryless_outputs(self, batch: Batch) -> torch.Tensor:
        """Equal logits for every class at every position: the uniform distribution."""
        return torch.zeros(len(batch), self.sequence_length, self.output_size, device=batch.inputs.device)


def one_hot(symbols: torch.Tensor, size: int) -> torch.Tensor:
    """Float32 one-hot inputs of ``symbols``."""
    return F.one_hot(symbols, size).float()


def random_subset(batch_size: int, population: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Per row, ``size`` distinct integers from ``range(population)`` in random order."""
    noise = torch.rand(batch_size, population, generator=generator, device=generator.device)
    return noise.argsort(dim=-1)[:, :size]
