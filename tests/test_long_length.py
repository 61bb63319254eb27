"""The precision checks (``harness.testing``): at a long length float32 outputs and parameter gradients
stay close to float64 for the built-in cells, a float32 gradient 0.12 (or 0.0015) relative off
float64 is rejected with a message giving T, the sizes and the measured error, and so is a
log-space scan that loses that much precision by itself."""

from __future__ import annotations

import pytest
import torch

from harness.registry.loader import get_state
from harness.testing import check_model
from harness.testing.float32_report import main
from harness.testing.precision import GRADIENT_RTOL, OUTPUT_RTOL, float32_errors
from tests.whole_sequence_models import LogScanMinGRU, LossyGradients

SIZES = r"at length T=1000, batch 2, input_size 3, hidden_size 8"


@pytest.mark.parametrize("error", [0.12, 0.0015])
def test_a_float32_gradient_error_is_rejected_with_the_length_sizes_and_error(error, monkeypatch):
    monkeypatch.setattr(LossyGradients, "error", error)
    with pytest.raises(AssertionError, match=rf"{SIZES} the float32 gradient of parameter 'projection\.(weight|bias)' "
                                             rf"differs from float64 by {error:.3g} relative \(allowed 0\.001\)"):
        check_model(LossyGradients, checks=["long length"])


def test_the_lossy_model_passes_without_its_error(monkeypatch):
    monkeypatch.setattr(LossyGradients, "error", 0.0)
    assert check_model(LossyGradients, checks=["long length"]) == ["long length"]


def test_a_float32_log_space_scan_is_rejected_at_length_1000_not_at_length_7():
    with pytest.raises(AssertionError, match=rf"{SIZES} the float32 gradient of parameter .* differs from float64 by"):
        check_model(LogScanMinGRU, checks=["long length"])
    assert check_model(LogScanMinGRU, checks=["dtype:float64"]) == ["dtype:float64"]  # the short check passes it


def test_the_long_length_is_an_argument():
    """The log-space scan's float32 error grows with the length: well inside the bound at T = 20."""
    assert check_model(LogScanMinGRU, long_length=20, checks=["long length"]) == ["long length"]


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru", "peephole", "cifg"])
def test_the_builtin_cells_are_far_inside_the_bounds_at_length_1000(name):
    """The bounds' margin: the classic cells measure 100 times below them (docs/plugins.md)."""
    torch.manual_seed(0)
    module = get_state().models.get(name).build(input_size=3, hidden_size=8)
    errors = float32_errors(module, 3, 1000)
    assert errors.output_error < OUTPUT_RTOL / 10 and errors.gradient_error < GRADIENT_RTOL / 100, errors


def test_the_short_float64_message_gives_the_length_sizes_and_error():
    class Float32Offset(torch.nn.Module):
        """Computes something else in float32: its outputs there are shifted by 1e-3."""

        def __init__(self, input_size: int, hidden_size: int = 8) -> None:
            super().__init__()
            self.rnn = torch.nn.GRU(input_size, hidden_size, batch_first=True)
            self.output_size = hidden_size

        def forward(self, x):
            features, _ = self.rnn(x)
            features = features + (1e-3 if x.dtype == torch.float32 else 0.0)
            return features, features[:, -1]

    with pytest.raises(AssertionError, match=r"after \.double\(\) the outputs differ from float32 by [0-9.e-]+, more "
                                             r"than 0\.0001 \(length T=7, batch 4, input_size 3, hidden_size 8\)"):
        check_model(Float32Offset, checks=["dtype:float64"])


def test_the_measurement_command_prints_one_row_per_model(capsys):
    main(["rnn", "gru", "--length", "50"])
    main(["lstm", "--length", "50", "--option", "init=chrono"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == lines[3] == "model,options,length,batch,output_error,gradient_error,parameter"
    rows = [line.split(",") for line in lines if not line.startswith("model,")]
    assert [row[:4] for row in rows] == [["rnn", "", "50", "2"], ["gru", "", "50", "2"],
                                         ["lstm", "init=chrono", "50", "2"]]
    assert all(0 < float(row[5]) < GRADIENT_RTOL for row in rows)
