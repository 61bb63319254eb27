"""docs/plugins.md stays complete and correct: every hook is documented (with its signature,
arguments, return value and an example) and tested; every plugin setting and contract check is
documented; and the tutorial's code runs and passes the contract checks.

The pattern of datasette's tests/test_docs.py: adding a hook without documentation or without a
test fails here.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import tomllib
from pathlib import Path

import pytest

from harness import hookspecs, testing
from harness.cli import build_parser
from harness.registry.loader import HOOK_NAMES, load_plugins

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "plugins.md").read_text()
HOOKS = sorted(name for name, obj in vars(hookspecs).items()
               if callable(obj) and hasattr(obj, "harness_spec"))


def _plain_signature(func) -> str:
    """``(a, b=1, *, c=None)``: the signature without annotations, as the docs write it."""
    sig = inspect.signature(func)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def _section(heading: str) -> str:
    """The text from ``heading`` to the next heading of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    start = DOC.index(heading + "\n")
    ends = [m.start() for m in re.finditer(rf"^#{{1,{len(level)}}} ", DOC[start + len(heading):], re.M)]
    return DOC[start:start + len(heading) + (ends[0] if ends else len(DOC))]


def test_hook_list_is_the_loaders_list():
    assert HOOKS and HOOKS == sorted(HOOK_NAMES)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_signature_arguments_returns_and_example(hook):
    heading = f"### {hook}{_plain_signature(getattr(hookspecs, hook))}"
    assert heading + "\n" in DOC, f"docs/plugins.md has no section '{heading}'"
    section = _section(heading)
    for part in ("**Arguments**", "**Returns**", "**Example**"):
        assert part in section, f"the section of {hook} has no {part}"
    example = section[section.index("**Example**"):]
    assert "```python" in example and "@hookimpl" in example and f"def {hook}(register):" in example


def test_no_documented_hook_is_missing_from_the_specs():
    documented = re.findall(r"^### (register_\w+)\(", DOC, re.M)
    assert documented and set(documented) == set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_implemented_by_a_test_plugin(hook):
    """Some test (other than this file) implements the hook in a plugin it loads."""
    implementation = re.compile(rf"def {hook}\(register\)")
    sources = [p for p in (ROOT / "tests").glob("*.py") if p.name != Path(__file__).name]
    sources.append(ROOT / "examples" / "harness-mgu" / "src" / "harness_mgu" / "plugin.py")
    implementing = [p.name for p in sources if implementation.search(p.read_text())]
    assert implementing, f"no test plugin implements {hook}"
    # ... and some test module loads those plugins and checks what the hook registered
    tests = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py") if p.name != Path(__file__).name)
    assert f'"{hook}"' in tests, f"no test checks that {hook} was called"


@pytest.mark.parametrize("name", testing.__all__)
def test_every_public_name_of_harness_testing_is_documented(name):
    """Functions and classes under a heading with their signature; constants under a heading."""
    obj = getattr(testing, name)
    if callable(obj):
        heading = f"### {name}{_plain_signature(obj)}"
        assert heading + "\n" in DOC, f"docs/plugins.md has no section '{heading}'"
    else:
        assert re.search(rf"^### .*\b{name}\b", DOC, re.M), f"docs/plugins.md has no section on {name}"


def test_every_check_name_is_documented_in_order():
    """The bullets of check_model's and check_task's sections are exactly their checks, in order."""
    assert {"build", "shapes", "gradients", "device:meta", "device:cuda"} <= set(testing.MODEL_CHECKS)
    assert {"attributes", "seeding", "memoryless and chance"} <= set(testing.TASK_CHECKS)
    for func, names in (("check_model", testing.MODEL_CHECKS), ("check_task", testing.TASK_CHECKS)):
        section = _section(f"### {func}{_plain_signature(getattr(testing, func))}")
        documented = re.findall(r"^- \*\*([^*]+)\*\*", section, re.M)
        assert documented == list(names), f"the checks documented under {func} are not {names}"


def test_every_plugin_setting_is_documented():
    source = (ROOT / "harness" / "registry" / "loader.py").read_text()
    variables = set(re.findall(r"HARNESS_[A-Z_]+", source))
    assert {"HARNESS_PLUGINS", "HARNESS_STRICT_PLUGINS", "HARNESS_EXTRA_PLUGINS"} <= variables
    for variable in variables:
        assert variable in DOC, f"{variable} is not documented in docs/plugins.md"
    listing = build_parser()._subparsers._group_actions[0].choices["models"]
    options = {s for a in listing._actions for s in a.option_strings
               if s.startswith("--") and s not in ("--help", "--json")}
    assert options == {"--plugin", "--strict-plugins"}
    for option in options:
        assert f"`{option}" in DOC, f"{option} is not documented in docs/plugins.md"


# --------------------------------------------------------------------------------------------
# the tutorial's code runs
# --------------------------------------------------------------------------------------------

def _tutorial_files() -> dict[str, str]:
    blocks = re.findall(r"<!-- tutorial-file: (\S+) -->\n```\w+\n(.*?)```", DOC, re.S)
    return dict(blocks)


def test_tutorial_has_its_files():
    assert set(_tutorial_files()) == {"my_plugin.py", "test_my_plugin.py", "harness_indrnn/plugin.py",
                                      "pyproject.toml"}


@pytest.fixture
def tutorial_dir(tmp_path, monkeypatch):
    for name, text in _tutorial_files().items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HARNESS_PLUGINS", "none")
    yield tmp_path
    for module in ("my_plugin", "test_my_plugin", "harness_indrnn", "harness_indrnn.plugin",
                   "harness_indrnn.models", "harness_indrnn.tasks"):
        sys.modules.pop(module, None)


def test_tutorial_single_file_plugin_loads_and_its_tests_pass(tutorial_dir, monkeypatch):
    import torch

    torch.set_num_threads(1)
    state = load_plugins(extra=[str(tutorial_dir / "my_plugin.py")])
    assert not state.warnings
    assert "my_indrnn" in state.models and "first_bit" in state.tasks
    tests = importlib.import_module("test_my_plugin")
    functions = [f for name, f in vars(tests).items() if name.startswith("test_")]
    assert len(functions) == 1
    (function,) = functions
    (mark,) = [m for m in function.pytestmark if m.name == "parametrize"]
    params = mark.args[1]
    assert [p.id for p in params] == ([f"IndRNN-{c}" for c in testing.MODEL_CHECKS]
                                      + [f"FirstBit-{c}" for c in testing.TASK_CHECKS])
    for param in params:  # what pytest would run, item by item
        try:
            function(*param.values)
        except pytest.skip.Exception:
            assert param.id == "IndRNN-device:cuda" and not torch.cuda.is_available()


def test_tutorial_package_registers_lazily(tutorial_dir):
    package = tutorial_dir / "harness_indrnn"
    (package / "__init__.py").write_text("")
    single_file = (tutorial_dir / "my_plugin.py").read_text()
    (package / "models.py").write_text(single_file)  # step 4 moves the classes here ...
    (package / "tasks.py").write_text(single_file)  # ... and here
    state = load_plugins(extra=["harness_indrnn.plugin"])
    assert not state.warnings
    assert state.models.get("my_indrnn").target == "harness_indrnn.models:IndRNN"
    assert state.models.get("my_indrnn").load().__name__ == "IndRNN"
    assert state.tasks.get("first_bit").load().__name__ == "FirstBit"
    project = tomllib.loads((tutorial_dir / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["harness"] == {"indrnn": "harness_indrnn.plugin"}


@pytest.mark.parametrize("path", ["README.md", "results/reference/config.toml"])
def test_documented_sweep_configs_are_valid(path, tmp_path):
    """Every TOML sweep config the README shows, and the reference config, loads and validates."""
    from harness.runs import settings
    from harness.runs.config import SweepConfig, load_config_file
    from harness.runs.plan import plan_sweep

    roles = (settings.GRID, settings.TRIAL, settings.RUN)
    text = (ROOT / path).read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S) if path.endswith(".md") else [text]
    assert blocks
    for i, block in enumerate(blocks):
        config = tmp_path / f"block{i}.toml"
        config.write_text(block)
        plan_sweep(SweepConfig.from_raw(load_config_file(config, roles), roles))  # names and options too
