"""The floor's products, derived from parameter shapes (harness.runs.floor)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.runs.floor import GemmTimer, find_products


class _Diagonal(nn.Module):
    """A diagonal recurrence h_t = a ⊙ h_{t-1} + x_t: no matrix products at all."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.decay = nn.Parameter(torch.rand(1, hidden_size))
        self.output_size = hidden_size


class _LinearCell(nn.Module):
    """A third-party layout: separate nn.Linear layers, one with a row count that is not a multiple of H."""

    def __init__(self, inputs: int, hidden: int) -> None:
        super().__init__()
        self.ih = nn.Linear(inputs, 3 * hidden)
        self.hh = nn.Linear(hidden, 3 * hidden, bias=False)
        self.project = nn.Linear(hidden, 5)
        self.scale = nn.Parameter(torch.ones(2, hidden))  # a stack of per-unit vectors


def test_lstm_products_are_its_gate_matrices():
    found = find_products(nn.LSTM(7, 16, batch_first=True), 16)
    assert found.shapes == ((64, 7 + 16),)
    assert found.flops(10) == 6 * 10 * (7 + 16) * 4 * 16 and found.note == ""


def test_bidirectional_lstm_counts_both_directions():
    found = find_products(nn.LSTM(5, 8, batch_first=True, bidirectional=True), 8)
    assert found.flops(1) == 2 * 6 * (5 + 8) * 4 * 8


def test_linear_layers_count_and_vectors_do_not():
    found = find_products(_LinearCell(4, 6), 6)
    assert dict(found.shapes) == {18: 4 + 6, 5: 6}
    assert found.skipped == ("scale 2x6",) and "scale 2x6" in found.note


def test_diagonal_recurrence_has_no_floor():
    found = find_products(_Diagonal(8), 8)
    assert found.shapes == () and found.flops(100) == 0
    assert found.note.startswith("n/a:")


def test_timer_scales_a_slice_of_the_positions(monkeypatch):
    from harness.runs import floor

    monkeypatch.setattr(floor, "MAX_OPERAND_BYTES", 4 * 1024)  # forces a slice of the positions
    timer = GemmTimer(positions=10_000)
    seconds = timer.time_shape(8, 4)
    assert seconds > 0 and timer.times[(8, 4)] == [seconds]
    found = find_products(nn.RNN(2, 2), 2)
    timer.time_round(found.shapes)
    assert len(timer.floor_seconds(found)) == 1


def test_timer_rejects_no_positions():
    with pytest.raises(ValueError, match="positions must be at least 1"):
        GemmTimer(positions=0)
