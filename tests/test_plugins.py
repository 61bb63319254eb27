"""The plugin system: discovery, lazy loading, containment of broken plugins, strict mode, filters."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.errors import HarnessError, PluginError
from harness.registry.entries import Entry, Registry
from harness.registry.loader import BUILTIN_PLUGINS, get_state, load_plugins
from tests import plugin_sources as src

BUILTIN_MODELS = ["bilstm", "cifg", "gru", "indrnn", "lru", "lstm", "mamba", "mingru", "minlstm", "peephole", "rnn",
                  "slstm"]
BUILTIN_TASKS = ["adding", "copy", "mqar", "recall", "selective_copy"]


def test_builtins_are_ordinary_plugins(monkeypatch):
    monkeypatch.setenv("HARNESS_PLUGINS", "none")
    state = load_plugins()
    assert state.models.names() == BUILTIN_MODELS
    assert state.tasks.names() == BUILTIN_TASKS
    assert [p.name for p in state.plugins] == list(BUILTIN_PLUGINS)
    assert all(p.source == "built-in" and p.hooks for p in state.plugins)
    assert state.models.get("coupled").name == "cifg"
    assert state.models.get("lstm").plugin == "harness.plugins.torch_rnns"


def test_listing_plugins_does_not_import_torch():
    code = ("import sys; from harness.registry.loader import get_state; s = get_state(); "
            "assert s.models.names() and s.tasks.names(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_entry_point_plugin_is_discovered_with_distribution(fake_distribution, monkeypatch):
    fake_distribution("toy-dist", {"toy_model_plugin": src.TOY_MODEL}, {"toy_model_impl": src.TOY_MODEL_IMPL})
    sys.modules.pop("toy_model_impl", None)
    state = load_plugins()
    entry = state.models.get("toy")
    assert entry.plugin == "toy_model_plugin"
    assert "toy_model_impl" not in sys.modules  # registered lazily: nothing imported yet
    info = next(p for p in state.plugins if p.name == "toy_model_plugin")
    assert (info.source, info.distribution, info.version, info.hooks) == (
        "entry point", "toy-dist", "1.2.3", ["register_models"])
    model = entry.build(input_size=3, hidden_size=4)
    assert model.output_size == 4 and "toy_model_impl" in sys.modules


@pytest.mark.parametrize("setting, expected", [("none", False), ("", False), ("toy_model_plugin", True),
                                               ("toy-dist", True), ("other", False)])
def test_harness_plugins_filter(fake_distribution, monkeypatch, setting, expected):
    fake_distribution("toy-dist", {"toy_model_plugin": src.TOY_MODEL}, {"toy_model_impl": src.TOY_MODEL_IMPL})
    monkeypatch.setenv("HARNESS_PLUGINS", setting)
    assert ("toy" in load_plugins().models) is expected


@pytest.mark.parametrize("source, fragment", [
    (src.RAISES_AT_IMPORT, "failed to import: ImportError: this plugin is broken on purpose"),
    (src.RAISES_IN_HOOK, "raised in register_models: ValueError: hook failed on purpose"),
    (src.MISSPELLED_HOOK, "unknown hook 'register_model' (did you mean 'register_models'?)"),
])
def test_broken_plugin_warns_once_and_the_rest_works(fake_distribution, capsys, source, fragment):
    fake_distribution("broken-dist", {"broken_plugin": source})
    state = load_plugins()
    assert state.models.names() == BUILTIN_MODELS
    assert len(state.warnings) == 1 and fragment in state.warnings[0]
    assert "broken_plugin" in state.warnings[0]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]
    info = next(p for p in state.plugins if p.name == "broken_plugin")
    assert info.status == "failed" and fragment in info.error


@pytest.mark.parametrize("source", [src.RAISES_AT_IMPORT, src.RAISES_IN_HOOK, src.MISSPELLED_HOOK,
                                    src.DUPLICATE_NAME])
def test_strict_mode_turns_plugin_problems_into_errors(fake_distribution, monkeypatch, source):
    fake_distribution("broken-dist", {"broken_plugin": source}, {"toy_model_impl": src.TOY_MODEL_IMPL})
    monkeypatch.setenv("HARNESS_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="broken_plugin"):
        load_plugins()


def test_duplicate_name_names_both_plugins(fake_distribution):
    fake_distribution("dup-dist", {"dup_plugin": src.DUPLICATE_NAME}, {"toy_model_impl": src.TOY_MODEL_IMPL})
    state = load_plugins()
    assert state.models.get("lstm").plugin == "harness.plugins.torch_rnns"
    assert "unique_dup_test_model" in state.models  # the plugin's other names still register
    (warning,) = state.warnings
    assert "duplicate model name 'lstm'" in warning
    assert "harness.plugins.torch_rnns" in warning and "dup_plugin" in warning


def test_extra_plugin_from_file_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_PLUGINS", "none")
    path = tmp_path / "my_models.py"
    path.write_text(src.FAILING_MODELS)
    monkeypatch.setenv("HARNESS_EXTRA_PLUGINS", str(path))
    state = load_plugins()
    assert {"exploding", "diverging"} <= set(state.models.names())
    info = next(p for p in state.plugins if p.source == "command line")
    assert info.name == str(path) and info.hooks == ["register_models"]


def test_missing_extra_plugin_is_contained(monkeypatch):
    monkeypatch.setenv("HARNESS_PLUGINS", "none")
    monkeypatch.setenv("HARNESS_EXTRA_PLUGINS", "no_such_module_for_harness_tests")
    state = load_plugins()
    assert state.models.names() == BUILTIN_MODELS
    assert "no_such_module_for_harness_tests" in state.warnings[0]


def test_unknown_name_suggests_closest_and_lists_all():
    with pytest.raises(HarnessError) as info:
        get_state().models.get("lstn")
    message = str(info.value)
    assert "\n" not in message
    assert "did you mean 'lstm'" in message
    assert all(name in message for name in BUILTIN_MODELS)


def test_unknown_name_without_close_match_lists_all():
    message = Registry("task").unknown_message("zzzz")
    assert "did you mean" not in message and message.startswith("unknown task 'zzzz'")


def test_broken_lazy_target_is_a_clear_error():
    entry = Entry(kind="model", name="ghost", target="no_such_module_xyz:build", description="",
                  plugin="ghost-plugin")
    with pytest.raises(PluginError, match="ghost-plugin.*no_such_module_xyz:build"):
        entry.load()


def test_registry_rejects_invalid_names():
    registry = Registry("model")
    for bad in ("", " lstm", "a,b"):
        with pytest.raises(PluginError):
            registry.add(Entry(kind="model", name=bad, target="m:f", description="", plugin="p"))
