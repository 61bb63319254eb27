"""``harness bench`` on tiny sizes: the structure of its output, never its timings."""

from __future__ import annotations

import json

import pytest
import torch

from harness.cli import main
from harness.runs.bench import BenchConfig, format_report, measure_peak_in_child, run_bench
from tests import plugin_sources as src

TINY = ["--lengths", "3,5", "--batch-size", "4", "--hidden-size", "8", "--input-size", "3",
        "--repeats", "2", "--warmup", "1", "--threads", "1", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_bench_json_has_every_model_and_length(capsys):
    assert main(["bench", "--models", "cifg,peephole", *TINY, "--no-memory", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["results"]
    # the model registered as the reference (the built-ins register lstm) is always timed
    assert {(r["model"], r["length"]) for r in rows} == {
        (m, t) for m in ("lstm", "cifg", "peephole") for t in (3, 5)}
    for row in rows:
        assert row["error"] == ""
        assert len(row["times_ms"]) == 2 and all(t > 0 for t in row["times_ms"])
        assert row["ms_per_step"] > 0 and row["ratio_to_reference"] > 0
        assert row["ms_min"] <= row["ms_per_step"] <= row["ms_max"]
        assert row["ms_min"] == min(row["times_ms"]) and row["ms_max"] == max(row["times_ms"])
        assert len(row["floor_times_ms"]) == 2 and row["floor_ms_min"] <= row["floor_ms"] <= row["floor_ms_max"]
        assert row["ratio_to_floor"] == pytest.approx(row["ms_per_step"] / row["floor_ms"])
        assert len(row["cpu_times_ms"]) == len(row["floor_cpu_times_ms"]) == 2
        assert row["cpu_ratio_to_floor"] == pytest.approx(row["cpu_ms_per_step"] / row["floor_cpu_ms"])
        assert row["peak_memory_mb"] is None
    assert all(r["ratio_to_reference"] == 1.0 for r in rows if r["model"] == "lstm")
    assert report["config"]["batch_size"] == 4 and report["config"]["threads"] == 1
    assert {"cpu", "cores", "torch", "torch_threads", "malloc_tuned"} <= set(report["machine"])
    assert report["reference"] == "lstm" and report["memory_method"] == "not measured"


def test_bench_defaults_to_every_registered_model(capsys):
    from harness.registry.loader import get_state

    assert main(["bench", *TINY[:2], "--lengths", "2", *TINY[4:], "--no-memory", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert {r["model"] for r in rows} == set(get_state().models.names())


def test_bench_table_lists_ms_ratio_and_memory(capsys):
    assert main(["bench", "--models", "rnn", *TINY, "--lengths", "4", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "ms/step" in out and "x lstm" in out and "peak MiB" in out
    header = next(line.split() for line in out.splitlines() if line.split()[:2] == ["T", "model"])
    assert header[2:11] == ["ms/step", "min-max", "floor", "ms", "x", "floor", "cpu", "x", "floor"]
    lines = [line.split() for line in out.splitlines()]
    table = {cells[1]: cells for cells in lines if len(cells) >= 5 and cells[0] == "4"}
    assert set(table) == {"lstm", "rnn"}
    for cells in table.values():
        # ms/step, floor ms, ratio to the floor (wall, cpu), ratio to lstm, peak MiB are numbers
        float(cells[2]), float(cells[4]), float(cells[5]), float(cells[6]), float(cells[7]), float(cells[8])
        low, high = (float(v) for v in cells[3].split("-"))  # the spread of the repeats
        assert low <= float(cells[2]) <= high


def test_memory_probe_runs_in_a_fresh_process():
    config = BenchConfig(models=("gru",), lengths=(4,), batch_size=4, hidden_size=8, input_size=3,
                         repeats=1, warmup=1, threads=1)
    peak = measure_peak_in_child("gru", config, 4)
    assert peak >= 0


def test_failing_third_party_model_is_reported_not_fatal(tmp_path, capsys):
    plugin = tmp_path / "failing_models.py"
    plugin.write_text(src.FAILING_MODELS)
    code = main(["bench", "--plugin", str(plugin), "--models", "exploding,rnn", *TINY, "--no-memory", "--json"])
    assert code == 1
    rows = {(r["model"], r["length"]): r for r in json.loads(capsys.readouterr().out)["results"]}
    assert "boom from a buggy model" in rows["exploding", 3]["error"]
    assert rows["exploding", 3]["ms_per_step"] is None
    assert rows["rnn", 3]["ms_per_step"] > 0 and not rows["rnn", 3]["error"]


def test_unknown_model_is_one_line_error(capsys):
    assert main(["bench", "--models", "lstmm", *TINY]) == 2
    assert "unknown model 'lstmm'" in capsys.readouterr().err


def test_format_report_without_reference():
    config = BenchConfig(models=("rnn",), lengths=(3,), batch_size=2, hidden_size=4, input_size=2,
                         repeats=1, warmup=0, threads=1, memory=False)
    report = run_bench(config)
    assert report["results"][0]["ratio_to_reference"] is None
    assert "rnn" in format_report(report)


def _floor_gflop(gates: int, batch: int, length: int, inputs: int, hidden: int) -> float:
    """6·B·T·(I + H)·G·H: the forward and two backward products of W_ih and W_hh over every position."""
    return 6 * batch * length * (inputs + hidden) * gates * hidden / 1e9


def test_floor_counts_each_models_products(capsys):
    assert main(["bench", "--models", "rnn,gru,cifg,peephole,bilstm", *TINY, "--no-memory", "--json"]) == 0
    rows = {(r["model"], r["length"]): r for r in json.loads(capsys.readouterr().out)["results"]}
    gates = {"rnn": 1, "lstm": 4, "gru": 3, "cifg": 3, "peephole": 4, "bilstm": 8}  # bilstm: two directions
    for (model, length), row in rows.items():
        assert row["floor_gflop"] == pytest.approx(_floor_gflop(gates[model], 4, length, 3, 8)), model
    assert rows["peephole", 3]["floor_note"] == "element-wise, not in the floor: cell.peephole_weights 3x8"
    assert rows["lstm", 3]["floor_note"] == "" and rows["cifg", 3]["implementation"]


def test_model_options_reach_the_builder_and_one_thread_is_the_default(capsys):
    without_threads = TINY[:TINY.index("--threads")] + TINY[TINY.index("--threads") + 2:]
    assert main(["bench", "--models", "peephole", *without_threads, "--no-memory", "--json",
                 "--model-opt", "peephole:peepholes=false"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"]["threads"] == 1 and report["machine"]["torch_threads"] == 1
    peephole = [r for r in report["results"] if r["model"] == "peephole"]
    assert report["config"]["model_options"] == {"peephole": {"peepholes": False}}
    assert all(r["floor_note"] == "" for r in peephole)  # no peephole weights to leave out


def test_model_option_axis_is_one_line_error(capsys):
    assert main(["bench", "--models", "cifg", *TINY, "--model-opt", "forget_bias=1,3"]) == 2
    assert "one value per option" in capsys.readouterr().err
    assert main(["bench", "--models", "cifg", *TINY, "--model-opt", "cifg:no_such=1"]) == 2
    assert "has no option 'no_such'" in capsys.readouterr().err


DIAGONAL_MODEL = '''
import torch
from torch import nn
from harness import hookimpl


class Diagonal(nn.Module):
    """h_t = a * h_{t-1} + tanh(x_t summed): a diagonal recurrence, no matrix products."""
    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.decay = nn.Parameter(torch.full((hidden_size,), 0.5))
        self.output_size = hidden_size
    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.output_size)
        outputs = []
        for x_t in x.unbind(1):
            h = self.decay * h + torch.tanh(x_t.sum(1, keepdim=True))
            outputs.append(h)
        return torch.stack(outputs, 1), h


@hookimpl
def register_models(register):
    register("diagonal", Diagonal, description="A diagonal recurrence.")
'''


def test_model_without_matrices_has_no_floor(tmp_path, capsys):
    plugin = tmp_path / "diagonal_models.py"
    plugin.write_text(DIAGONAL_MODEL)
    assert main(["bench", "--plugin", str(plugin), "--models", "diagonal", *TINY, "--no-memory", "--quiet"]) == 0
    out = capsys.readouterr().out
    cells = next(line.split() for line in out.splitlines() if line.split()[:2] == ["3", "diagonal"])
    assert float(cells[2]) > 0 and cells[4:7] == ["-", "-", "-"]  # ms/step; no floor, no ratios to it
    assert "diagonal: n/a: no 2-D parameter with a multiple of H rows" in out
