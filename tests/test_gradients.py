"""Gradient flow: ‖∂L/∂x_t‖ against distance, measured on models whose answer is known, and the
``harness gradients`` command and ``--grad-stats`` end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from harness.analysis.decay import decay_rate
from harness.analysis.gradient_report import fall_distance, gradient_summary
from harness.cli import main
from harness.errors import HarnessError
from harness.model_api import TaskModel
from harness.runs.gradients import measure_gradients
from harness.runs.spec import TrialSpec
from harness.runs.training import build_task

EXAMPLE_PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "harness-mgu" / "src" / "harness_mgu" / "plugin.py"


class LinearRecurrence(nn.Module):
    """h_t = a h_{t-1} + W x_t: ∂L/∂x_{τ-d} = a^d Wᵀ ∂L/∂h_τ, so the decay rate is log|a| exactly."""

    def __init__(self, input_size: int, hidden_size: int, a: float) -> None:
        super().__init__()
        self.a = a
        self.input = nn.Linear(input_size, hidden_size, bias=False)
        self.output_size = hidden_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x.new_zeros(x.shape[0], self.output_size)
        outputs = []
        for x_t in self.input(x).unbind(1):
            h = self.a * h + x_t
            outputs.append(h)
        features = torch.stack(outputs, 1)
        return features, features[:, -1]


def _measure(core: nn.Module, task_name: str = "recall", length: int = 30, **options) -> pd.DataFrame:
    spec = TrialSpec.build("lstm", task_name, length, 0, {"device": "cpu"}, task_options=options)
    task = build_task(spec)
    torch.manual_seed(0)
    model = TaskModel(core, task.output_size, task.readout)
    return pd.DataFrame(measure_gradients(model, task, spec, torch.device("cpu"), 0))


@pytest.mark.parametrize("a", [0.9, 0.5, -0.7, 1.0])
def test_decay_rate_of_a_linear_recurrence_is_log_a(a):
    torch.manual_seed(1)
    rows = _measure(LinearRecurrence(17, 6, a))
    assert list(rows["distance"]) == list(range(32))  # recall at T = 30: length 32, scored at the last step
    expected = [abs(a) ** d for d in rows["distance"]]
    assert rows["rel_norm"].tolist() == pytest.approx(expected, rel=1e-9)  # float64: exact
    assert decay_rate(list(rows["distance"]), list(rows["rel_norm"])) == pytest.approx(math.log(abs(a)), abs=1e-4)
    fall, extrapolated = fall_distance(rows["distance"].to_numpy(float), rows["rel_norm"].to_numpy(float),
                                       math.log(abs(a)) if a != 1 else math.nan)
    if a == 1.0:
        assert math.isinf(fall)
    else:
        assert fall == pytest.approx(math.log(1e-6) / math.log(abs(a)), rel=1e-6)
        assert extrapolated == (math.log(1e-6) / math.log(abs(a)) > 31)


def test_sequence_tasks_are_measured_from_the_first_scored_position():
    rows = _measure(LinearRecurrence(10, 4, 0.8), "copy", 5)
    assert rows["distance"].max() == 5 + 10  # copy at T = 5: the answers start at position T + 10 = 15
    assert rows["rel_norm"].tolist() == pytest.approx([0.8 ** d for d in rows["distance"]], rel=1e-9)


def test_cell_loop_models_also_give_hidden_state_gradients():
    from harness.plugins.gated_cell_models import build_cifg

    torch.manual_seed(2)
    rows = _measure(build_cifg(17, 8))
    assert rows["state_grad_norm"].notna().all() and (rows["state_grad_norm"] > 0).all()
    from harness.plugins.torch_rnn_models import build_lstm

    assert _measure(build_lstm(17, 8))["state_grad_norm"].isna().all()  # torch.nn modules expose no h_t


def test_gradients_command_writes_csv_figure_and_decay_rates(tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["gradients", "--models", "rnn,lstm", "--task", "recall", "--length", "50", "--seeds", "1",
                 "--at", "0", "--steps", "20", "--hidden-size", "32", "--workers", "1", "--out", str(out)]) == 0
    frame = pd.read_csv(out / "gradients.csv")
    assert {"model", "task", "length", "seed", "step", "distance", "grad_norm", "rel_norm"} <= set(frame.columns)
    assert set(frame["step"]) == {0} and frame["distance"].max() == 51
    assert (out / "gradients.png").read_bytes()[:4] == b"\x89PNG"
    summary = gradient_summary([out]).set_index("model")
    # at the default initialisations the tanh RNN's gradient falls faster with distance than the LSTM's
    assert summary.loc["rnn", "decay_rate"] < summary.loc["lstm", "decay_rate"] < 0
    text = capsys.readouterr().out
    assert "decay rate per step" in text and "rnn" in text
    assert main(["report", str(out)]) == 0 and "gradient flow" in capsys.readouterr().out


def test_points_and_settings_are_kept_apart(tmp_path):
    """``--at 0,end`` gives two labelled measurements per trial, and an option axis gives one line per
    setting (``lstm init=chrono``): chrono's gradient decays more slowly than the default's at init."""
    out = tmp_path / "g"
    assert main(["gradients", "--models", "lstm", "--task", "recall", "--length", "40", "--seeds", "1",
                 "--at", "0,end", "--model-opt", "init=default,chrono", "--steps", "10", "--eval-every", "5",
                 "--eval-size", "32", "--hidden-size", "16", "--batch-size", "8", "--workers", "0", "--quiet",
                 "--out", str(out)]) == 0
    frame = pd.read_csv(out / "gradients.csv", dtype={"at": str})
    assert set(frame["at"]) == {"0", "end"} and set(frame.loc[frame["at"] == "end", "step"]) == {10}
    summary = gradient_summary([out])
    assert set(summary["at"]) == {"0", "end"} and set(summary["model"]) == {"lstm init=default", "lstm init=chrono"}
    at_init = summary[summary["at"] == "0"].set_index("model")["decay_rate"]
    assert at_init["lstm init=default"] < at_init["lstm init=chrono"] < 0
    assert (out / "gradients.png").read_bytes()[:4] == b"\x89PNG"


def test_gradients_of_a_third_party_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_PLUGINS", "none")
    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN.parents[1]))
    out = tmp_path / "mgu"
    assert main(["gradients", "--plugin", str(EXAMPLE_PLUGIN), "--models", "mgu", "--task", "temporal_order",
                 "--lengths", "20", "--seeds", "1", "--at", "0", "--hidden-size", "8", "--workers", "0",
                 "--no-plot", "--quiet", "--out", str(out)]) == 0
    frame = pd.read_csv(out / "gradients.csv")
    assert len(frame) == 22 and frame["state_grad_norm"].notna().all()  # MGU runs on the cell loop


def test_grad_stats_during_a_run(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--models", "lstm", "--task", "recall", "--lengths", "10", "--seeds", "1", "--steps", "20",
                 "--eval-every", "10", "--eval-size", "64", "--hidden-size", "8", "--batch-size", "16",
                 "--grad-stats", "--workers", "0", "--no-plot", "--quiet", "--out", str(out)]) == 0
    curves = pd.read_csv(out / "curves.csv")
    assert len(curves) == 2 and curves["grad_ratio"].between(0, 10).all() and (curves["grad_decay"] < 0).all()


# --------------------------------------------------------------------------------------------
# hidden-state gradients of whole-sequence models: measured through the states later steps are
# computed from (a scan model's sequential mode), or refused with one line, never zeros
# --------------------------------------------------------------------------------------------

def test_a_scan_model_in_its_sequential_mode_gives_nonzero_state_gradients():
    from tests.whole_sequence_models import LogScanMinGRU

    torch.manual_seed(3)
    rows = _measure(LogScanMinGRU(17, 8))
    assert rows["state_grad_norm"].notna().all() and (rows["state_grad_norm"] > 0).all()


def test_the_sequential_mode_gives_the_scans_input_gradients():
    """keep_states switches the minGRU to its loop; the input gradients are the scan's to float64 rounding."""
    from tests.whole_sequence_models import LogScanMinGRU

    class ScanOnly(LogScanMinGRU):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            del self.keep_states, self.states  # no keep_states: measured in scan mode, no state column

        def forward(self, x):
            h = self.scan(x)
            return h, h[:, -1]

    torch.manual_seed(3)
    looped = _measure(LogScanMinGRU(17, 8))
    torch.manual_seed(3)
    scanned = _measure(ScanOnly(17, 8))
    assert scanned["state_grad_norm"].isna().all()
    assert looped["grad_norm"].tolist() == pytest.approx(scanned["grad_norm"].tolist(), rel=1e-9)


@pytest.mark.parametrize("model, task, reason", [
    ("CopiedStates", "recall", r"no gradient of the loss reaches 32 of the 32 kept states up to step 31 "
                               r"\(e\.g\. h_0\)"),
    ("StackedStates", "copy", r"‖∂L/∂h_t‖ is 0 at 15 of the 16 kept states up to step 15 \(e\.g\. t = 0\)"),
])
def test_states_that_later_steps_are_not_computed_from_are_refused_in_one_line(model, task, reason):
    import tests.whole_sequence_models as models

    torch.manual_seed(3)
    with pytest.raises(HarnessError, match=rf"^cannot measure ‖∂L/∂h_t‖ for model 'lstm': {reason}.*, so the later "
                                           rf"steps are not computed from them") as info:
        _measure(getattr(models, model)(17 if task == "recall" else 10, 8), task, 30 if task == "recall" else 5)
    assert "\n" not in str(info.value)


def test_states_left_empty_are_refused():
    from tests.whole_sequence_models import LogScanMinGRU

    class ForgetsItsStates(LogScanMinGRU):
        def forward(self, x):
            h = self.scan(x)
            return h, h[:, -1]

    with pytest.raises(HarnessError, match="must leave a list of tensors in states, got NoneType"):
        _measure(ForgetsItsStates(17, 8))


def test_grad_stats_do_not_need_the_states():
    from harness.runs.gradients import gradient_stats
    from tests.whole_sequence_models import CopiedStates

    spec = TrialSpec.build("lstm", "recall", 20, 0, {"device": "cpu"})
    task = build_task(spec)
    stats = gradient_stats(TaskModel(CopiedStates(task.input_size, 8), task.output_size, task.readout), task, spec,
                           torch.device("cpu"))
    assert stats["grad_decay"] < 0


def test_the_gradients_command_reports_the_refusal(tmp_path, monkeypatch):
    plugin = tmp_path / "copied_states_plugin.py"
    plugin.write_text("from harness import hookimpl\nfrom tests.whole_sequence_models import CopiedStates\n\n\n"
                      "@hookimpl\ndef register_models(register):\n    register('copied', CopiedStates)\n")
    monkeypatch.setenv("HARNESS_PLUGINS", "none")
    out = tmp_path / "g"
    main(["gradients", "--plugin", str(plugin), "--models", "copied", "--task", "recall", "--length", "10",
          "--seeds", "1", "--at", "0", "--steps", "5", "--hidden-size", "8", "--workers", "0", "--no-plot",
          "--quiet", "--out", str(out)])
    (error,) = pd.read_csv(out / "results.csv")["error"]
    assert error.startswith("HarnessError: cannot measure ‖∂L/∂h_t‖ for model 'copied': no gradient of the loss "
                            "reaches 12 of the 12 kept states")


def test_the_hidden_states_check_says_the_same_before_any_run():
    from harness.testing import check_model
    from tests.whole_sequence_models import CopiedStates, LogScanMinGRU, StackedStates

    assert check_model(LogScanMinGRU, checks=["hidden states"]) == ["hidden states"]
    with pytest.raises(AssertionError, match=r"^model CopiedStates: hidden states: no gradient of the loss reaches 7 "
                                             r"of the 7 kept states up to step 6 \(e\.g\. h_0\)"):
        check_model(CopiedStates, checks=["hidden states"])
    with pytest.raises(AssertionError, match=r"hidden states: no gradient of the loss reaches 6 of the 7 kept states"):
        check_model(StackedStates, checks=["hidden states"])


def test_the_hidden_states_check_rejects_a_sequential_mode_that_computes_something_else():
    from harness.testing import check_model
    from tests.whole_sequence_models import LogScanMinGRU

    class LoopDiffers(LogScanMinGRU):
        def loop(self, x):
            return [2 * h for h in super().loop(x)]

    with pytest.raises(AssertionError, match=r"hidden states: with keep_states = True the outputs differ by .* from "
                                             r"those without"):
        check_model(LoopDiffers, checks=["hidden states"])
