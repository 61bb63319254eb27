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
    lines = [line.split() for line in out.splitlines()]
    table = {cells[1]: cells for cells in lines if len(cells) >= 5 and cells[0] == "4"}
    assert set(table) == {"lstm", "rnn"}
    for cells in table.values():
        float(cells[2]), float(cells[3]), float(cells[4])  # ms/step, ratio, peak MiB are numbers


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
