"""Selective copy (Gu & Dao 2023, section 3.1; the MAD suite of Poli et al. 2024;
docs/tasks.md#selective_copy).

K data tokens (default 4) from a vocabulary of V symbols (default 8) sit at random positions among
T blank steps; K marker steps follow, at which the model names the tokens in the order they came.
Symbols: 0 blank, 1..V data, V + 1 marker (one-hot, V + 2 features); outputs: V classes (the data
symbols). Sequence length T + 2K. A token read at position p and answered at T + K + j (j-th in
order) is held T + K + j - p steps: between K and T + K. Unlike copy, the spacing changes from
sequence to sequence, so no fixed delay (a time-invariant convolution) solves it. Loss and score
(accuracy) over the K marker positions only; chance 1/V, memoryless loss ln V.
"""

from __future__ import annotations

import torch
from harness.tasks._answers import TailAnswers, check_count, one_hot, random_subset

from harness.task_api import Batch

BLANK = 0


class SelectiveCopy(TailAnswers):
    name = "selective_copy"
    input_size = 10
    output_size = 8
    default_lengths = (8, 16, 32, 64)
    #: At the default 1,000 steps nothing is learned yet: the LSTM (seed 0, T = 8, lr 1e-3) reached
    #: 0.986 and stopped at 2,500 steps (docs/tasks.md#selective_copy).
    default_steps = 3000

    def __init__(self, length: int, tokens: int = 4, vocab_size: int = 8) -> None:
        super().__init__(length)
        self.answers = check_count(self.name, "tokens", tokens, 1)
        self.vocab_size = check_count(self.name, "vocab_size", vocab_size, 2)
        self.marker = self.vocab_size + 1
        self.input_size = self.vocab_size + 2  # the sizes follow the options
        self.output_size = self.vocab_size

    @property
    def tokens(self) -> int:
        """K, the number of data tokens to copy."""
        return self.answers

    @property
    def sequence_length(self) -> int:
        return self.length + 2 * self.tokens

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        device, k, region = generator.device, self.tokens, self.length + self.tokens
        positions = random_subset(batch_size, region, k, generator).sort(dim=-1).values
        data = torch.randint(1, self.vocab_size + 1, (batch_size, k), generator=generator, device=device)
        symbols = torch.full((batch_size, self.sequence_length), BLANK, dtype=torch.long, device=device)
        symbols.scatter_(1, positions, data)
        symbols[:, region:] = self.marker
        targets = torch.zeros_like(symbols)
        targets[:, region:] = data - 1
        mask = torch.zeros_like(symbols, dtype=torch.bool)
        mask[:, region:] = True
        return Batch(one_hot(symbols, self.input_size), targets, mask)
