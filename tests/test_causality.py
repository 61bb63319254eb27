"""The causality check (``harness.testing``): it rejects the two non-causal models a plugin author
wrote from our docs (an LRU whose FFT convolution is circular, a minGRU that reads the sequence
backwards and summarises at h[:, 0]), and an undeclared bidirectional model; it accepts the same
models done right, and every built-in model (the bidirectional one skipped, saying why)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.testing import check_model
from harness.testing.model_checks import run_model_checks
from tests.test_contracts import GoodRNN
from tests.whole_sequence_models import FFTLRU, CircularFFTLRU, LogScanMinGRU, ReadsBackwards, ShortPaddedFFTLRU

NON_CAUSAL = [CircularFFTLRU, ReadsBackwards]


@pytest.mark.parametrize("factory", NON_CAUSAL)
def test_a_model_that_sees_the_future_is_rejected_naming_causality(factory):
    with pytest.raises(AssertionError, match=r"causality: the features at positions 0\.\.0 changed by .* the model "
                                             r"sees the future") as info:
        check_model(factory)
    assert str(info.value).startswith(f"model {factory.__qualname__}: causality:")


@pytest.mark.parametrize("factory", NON_CAUSAL)
def test_the_causality_check_alone_rejects_them(factory):
    with pytest.raises(AssertionError, match="causality"):
        check_model(factory, checks=["causality"])


@pytest.mark.parametrize("factory", [FFTLRU, LogScanMinGRU])
def test_the_same_models_done_right_pass(factory):
    """Zero padding to twice the length makes the FFT convolution causal; its float64 rounding noise
    (every output mixes every position's rounding) stays under the check's tolerance."""
    assert check_model(factory, checks=["causality", "gradients", "batch independence"]) == \
        ["batch independence", "gradients", "causality"]


def test_a_leak_of_one_step_is_caught_at_every_position_checked():
    """A convolution padded on the wrong side sees one step ahead: a leak at positions > 0 as well."""

    class OneStepAhead(nn.Module):
        def __init__(self, input_size: int, hidden_size: int = 8) -> None:
            super().__init__()
            self.conv = nn.Conv1d(input_size, hidden_size, kernel_size=3, padding=1)  # "same": taps t-1, t, t+1
            self.output_size = hidden_size

        def forward(self, x):
            features = self.conv(x.transpose(1, 2)).transpose(1, 2)
            return features, features[:, -1]

    with pytest.raises(AssertionError, match=r"causality: the features at positions 0\.\.0 changed"):
        check_model(OneStepAhead, checks=["causality"])


def test_a_leak_that_appears_only_at_longer_lengths_is_caught_at_64_steps():
    """Padding by a fixed 8 steps wraps the convolution around only beyond 9 steps: 7 does not show it."""
    with pytest.raises(AssertionError, match=r"causality: the features at positions 0\.\.0 changed by .* \(length 64,"):
        check_model(ShortPaddedFFTLRU, checks=["causality"])


class BiGRU(nn.Module):
    """A bidirectional GRU; ``declared`` says whether it sets ``bidirectional = True``."""

    declared = False

    def __init__(self, input_size: int, hidden_size: int = 8) -> None:
        super().__init__()
        self.rnn = nn.GRU(input_size, hidden_size, batch_first=True, bidirectional=True)
        self.output_size = 2 * hidden_size
        if self.declared:
            self.bidirectional = True

    def forward(self, x):
        features, final = self.rnn(x)
        return features, torch.cat([final[0], final[1]], -1)


class DeclaredBiGRU(BiGRU):
    declared = True


def test_a_bidirectional_model_must_declare_itself():
    with pytest.raises(AssertionError, match="causality: .* must declare bidirectional = True"):
        check_model(BiGRU, checks=["causality"])
    report = run_model_checks(DeclaredBiGRU, checks=["causality"])
    assert report.ran == [] and "declares bidirectional = True" in report.skipped["causality"]


def test_the_summary_of_a_unidirectional_model_is_its_last_position():
    class MeanSummary(GoodRNN):  # the contract tests' small correct model, with another summary
        def forward(self, x):
            features, _ = self.rnn(x)
            return features, features.mean(1)

    with pytest.raises(AssertionError, match="causality: the summary differs from the last position's features"):
        check_model(MeanSummary, checks=["causality"])


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru", "peephole", "cifg"])
def test_every_unidirectional_builtin_is_causal(name):
    assert check_model(name, checks=["causality"]) == ["causality"]


def test_the_builtin_bilstm_is_skipped_because_it_declares_itself():
    report = run_model_checks("bilstm", checks=["causality"])
    assert report.skipped == {"causality": "the model declares bidirectional = True: its features may depend on "
                                           "later inputs"}
