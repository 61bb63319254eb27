"""The example third-party plugin in ``examples/harness-mgu``: the quick local path (``--plugin`` /
HARNESS_EXTRA_PLUGINS, no packaging) and discovery through its installed entry point.

The installed-path test skips when the distribution is not installed, except under CI (env var
``CI`` set), where the example is installed and a skip would hide a broken entry point.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import math
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from harness.registry.loader import load_plugins

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "harness-mgu"
SRC = EXAMPLE / "src"
PLUGIN_FILE = SRC / "harness_mgu" / "plugin.py"
PYPROJECT = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
DIST_NAME = PYPROJECT["project"]["name"]

TINY = ["--lengths", "4", "--seeds", "1", "--steps", "10", "--eval-every", "5", "--eval-size", "32",
        "--hidden-size", "8", "--batch-size", "16", "--workers", "1", "--threads", "1", "--no-plot", "--quiet"]


@pytest.fixture
def local_plugin_env(monkeypatch):
    """Only the built-ins and the plugin given on the command line: an installed copy of the example
    would otherwise register the same names first (and the local copy would be a duplicate)."""
    monkeypatch.setenv("HARNESS_PLUGINS", "none")
    monkeypatch.setenv("HARNESS_EXTRA_PLUGINS", "")  # restored after the test, whatever --plugin sets
    monkeypatch.syspath_prepend(str(SRC))  # the lazy targets name harness_mgu.* modules


def test_example_declares_a_harness_entry_point():
    assert PYPROJECT["project"]["entry-points"]["harness"] == {"mgu": "harness_mgu.plugin"}
    assert any(dep.startswith("recurrent-harness") for dep in PYPROJECT["project"]["dependencies"])


def test_plugin_module_imports_no_torch():
    code = (f"import sys; sys.path.insert(0, {str(SRC)!r}); import harness_mgu.plugin; "
            "from harness.registry.loader import load_plugins; "
            "s = load_plugins(entry_points=False, extra=['harness_mgu.plugin']); "
            "assert 'mgu' in s.models and 'temporal_order' in s.tasks; "
            "print(sorted(m for m in ('torch', 'harness_mgu.mgu', 'harness_mgu.temporal_order') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_run_with_the_plugin_file_given_by_path(tmp_path, local_plugin_env, capsys):
    out = tmp_path / "run"
    code = main(["run", "--plugin", str(PLUGIN_FILE), "--models", "mgu,lstm", "--task", "temporal_order",
                 *TINY, "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    results = pd.read_csv(out / "results.csv").set_index("model")
    assert sorted(results.index) == ["lstm", "mgu"]
    assert set(results["status"]) == {"ok"} and set(results["task"]) == {"temporal_order"}
    assert (results["steps"] == 10).all() and results["score"].between(0, 1).all()
    assert (results["chance_score"] == 0.25).all()
    assert results["memoryless_loss"].map(lambda v: math.isclose(v, math.log(4))).all()
    assert (results["sequence_length"] == 6).all()
    # MGU at H=8 on 8 input features: W_ih, W_hh (2H rows each), two 2H biases, then the 8→4 head
    assert results.loc["mgu", "params"] == 2 * 8 * 8 + 2 * 8 * 8 + 2 * 2 * 8 + (8 * 4 + 4)
    curves = pd.read_csv(out / "curves.csv")
    assert sorted(curves.loc[curves.model == "mgu", "step"]) == [5, 10]
    plugins = json.loads((out / "run.json").read_text())["plugins"]
    local = [p for p in plugins if p["source"] == "command line"]
    assert [p["name"] for p in local] == [str(PLUGIN_FILE)] and local[0]["status"] == "loaded"
    assert "## temporal_order" in capsys.readouterr().out  # the summary table


def test_listings_with_the_plugin_module_from_the_environment(local_plugin_env, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_EXTRA_PLUGINS", "harness_mgu.plugin")
    assert main(["models", "--json"]) == 0
    models = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert models["mgu"]["plugin"] == "harness_mgu.plugin"
    assert models["mgu"]["target"] == "harness_mgu.mgu:build_mgu"
    assert models["mgu"]["defaults"] == {"gate_bias": -1.0}
    assert main(["tasks"]) == 0
    assert "temporal_order  harness_mgu.plugin" in capsys.readouterr().out


def test_plugin_option_overrides_nothing_and_reports_the_clash(fake_distribution, local_plugin_env, monkeypatch):
    """Entry points load before --plugin modules, so the installed copy keeps the names and the local
    copy's registrations are reported as duplicates, naming both plugins."""
    fake_distribution("mgu-copy", {"mgu_copy_plugin": "from harness_mgu.plugin import register_models, "
                                                      "register_tasks\n"})
    state = load_plugins(extra=[str(PLUGIN_FILE)])
    assert state.models.get("mgu").plugin == "mgu_copy_plugin"
    assert state.tasks.get("temporal_order").plugin == "mgu_copy_plugin"
    clashes = [w for w in state.warnings if str(PLUGIN_FILE) in w]
    assert len(clashes) == 2 and "duplicate model name 'mgu'" in clashes[0]
    assert "duplicate task name 'temporal_order'" in clashes[1]


def _installed_distribution():
    try:
        return metadata.distribution(DIST_NAME)
    except metadata.PackageNotFoundError:
        return None


def test_installed_distribution_is_discovered_through_its_entry_point(monkeypatch, capsys):
    dist = _installed_distribution()
    if dist is None:
        message = f"{DIST_NAME} is not installed (pip install -e examples/harness-mgu)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must install it so that entry-point discovery is tested")
        pytest.skip(message)
    monkeypatch.delenv("HARNESS_PLUGINS", raising=False)
    assert dist.version == PYPROJECT["project"]["version"]
    assert main(["plugins", "--json"]) == 0
    (info,) = [p for p in json.loads(capsys.readouterr().out) if p["distribution"] == DIST_NAME]
    expected = {"name": "mgu", "source": "entry point", "module": "harness_mgu.plugin",
                "distribution": DIST_NAME, "version": dist.version,
                "hooks": ["register_models", "register_tasks"], "status": "loaded", "error": None}
    assert {key: info.get(key) for key in expected} == expected
    assert main(["plugins"]) == 0
    assert f"{DIST_NAME} {dist.version}" in capsys.readouterr().out
    for command, name in (("models", "mgu"), ("tasks", "temporal_order")):
        assert main([command, "--json"]) == 0
        records = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
        assert records[name]["plugin"] == "mgu"
    # HARNESS_PLUGINS filters by entry-point or distribution name
    for setting, expected in (("none", False), (DIST_NAME, True), ("mgu", True), ("other", False)):
        monkeypatch.setenv("HARNESS_PLUGINS", setting)
        assert ("mgu" in load_plugins().models) is expected, setting


def test_model_and_task_listings_name_the_distribution_and_version(fake_distribution, local_plugin_env, capsys):
    fake_distribution("mgu-copy", {"mgu_copy_plugin": "from harness_mgu.plugin import register_models, "
                                                      "register_tasks\n"}, version="2.3.4")
    for command, name in (("models", "mgu"), ("tasks", "temporal_order")):
        assert main([command, "--json"]) == 0
        record = {r["name"]: r for r in json.loads(capsys.readouterr().out)}[name]
        assert (record["plugin"], record["distribution"], record["version"]) == ("mgu_copy_plugin", "mgu-copy", "2.3.4")
        assert main([command]) == 0
        row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(name + " "))
        assert "mgu-copy 2.3.4" in row
