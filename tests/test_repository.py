"""Facts about the repository and its packaging that must stay true as the code changes."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILTIN_MODELS = ("rnn", "lstm", "gru", "peephole", "cifg", "coupled", "bilstm", "mingru", "minlstm", "lru",
                  "mamba", "slstm", "indrnn")


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [ROOT / line for line in out.stdout.splitlines() if (ROOT / line).is_file()]


def test_no_reference_to_an_outside_spec_document():
    """The docs state every definition themselves and cite the papers."""
    word = re.compile(r"\b" + "S" + r"PEC\b")  # spelled apart, so that `git grep` finds no reference here either
    offenders = []
    for path in tracked_files():
        if path.suffix in (".png", ".pdf", ".svg"):
            continue
        text = path.read_text(encoding="utf-8", errors="ignore")
        offenders += [f"{path.relative_to(ROOT)}:{i}" for i, line in enumerate(text.splitlines(), 1)
                      if word.search(line)]
    assert not offenders, offenders


def test_no_core_module_names_a_built_in_model():
    """Display order, styles, the default sweep and the bench reference come from registrations."""
    pattern = re.compile(r"\b(" + "|".join(BUILTIN_MODELS) + r")\b")
    offenders = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in (ROOT / "harness").rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, offenders


def test_no_function_in_the_core_is_longer_than_100_lines():
    long = []
    for path in (ROOT / "harness").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 100:
                long.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert not long, long


def test_declared_metadata():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "recurrent-harness"  # `harness` on the package index is another project
    assert project["requires-python"] == ">=3.11"  # tomllib
    pandas = next(d for d in project["dependencies"] if d.startswith("pandas"))
    assert tuple(int(x) for x in pandas.split(">=")[1].split(".")[:2]) >= (2, 1)  # DataFrame.map
    example = tomllib.loads((ROOT / "examples" / "harness-mgu" / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("recurrent-harness") for d in example["dependencies"])
    assert not any(re.match(r"harness\b(?!-)", d) for d in example["dependencies"])


def test_the_wheel_holds_every_module_and_no_generic_top_level_name(tmp_path):
    """Every package and the kernels' C source are in the wheel; only `harness` is a top-level name."""
    # --no-build-isolation (no network needed) builds with this environment's setuptools
    needed = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"][0]
    floor = int(needed.partition(">=")[2].split(".")[0])
    if int(metadata.version("setuptools").split(".")[0]) < floor:
        pytest.skip(f"this environment's setuptools {metadata.version('setuptools')} is older than {needed}")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True)
    (wheel,) = tmp_path.glob("recurrent_harness-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"harness"}
    sources = {f"harness/{p.relative_to(ROOT / 'harness').as_posix()}" for p in (ROOT / "harness").rglob("*.py")}
    sources |= {f"harness/plugins/{p.relative_to(ROOT / 'plugins').as_posix()}" for p in (ROOT / "plugins").rglob("*")
                if p.suffix in (".py", ".c", ".h")}
    sources |= {f"harness/tasks/{p.name}" for p in (ROOT / "tasks").glob("*.py")}
    assert sources <= set(names), sorted(sources - set(names))


@pytest.mark.parametrize("folder", ["results/reference", "results/ablations/lstm-forget-bias-3"])
def test_committed_runs_resume_with_nothing_to_train(folder, tmp_path):
    """Folders written by harness 0.1 keep their identities: the command that made them finds every
    trial done (and is not refused as a change of settings)."""
    import shutil

    from harness.registry.loader import get_state
    from harness.runs import settings as S
    from harness.runs.config import SweepConfig, load_config_file
    from harness.runs.plan import check_resume, plan_sweep, row_key
    from harness.runs.schema import FINISHED
    from harness.runs.store import ResultStore

    copy = tmp_path / "run"
    shutil.copytree(ROOT / folder, copy)
    roles = (S.GRID, S.TRIAL, S.RUN)
    raw = load_config_file(ROOT / "results/reference/config.toml", roles)
    if "ablations" in folder:
        raw.update(models=["lstm"], tasks=["recall"], lengths=[40, 80], model_options={"lstm": {"forget_bias": 3}})
    plan = plan_sweep(SweepConfig.from_raw({**raw, "out": str(copy)}, roles))
    state = get_state()
    store = ResultStore(copy, key=row_key(state.models, state.tasks))
    check_resume(plan, list(store.rows.values()))
    assert [s.label for s in plan.specs if store.status(s.key) not in FINISHED] == []


def _script_parts(script: str) -> list[tuple[str, list[str]]]:
    """The (config, extra arguments) of every `harness horizon` command in results/horizons/SCRIPT: the
    arguments of a line that passes "${frontier[@]}" are the script's frontier=(...) array."""
    text = (ROOT / "results" / "horizons" / script).read_text()
    frontier = re.search(r"^frontier=\((.*)\)$", text, re.M)
    extra = frontier.group(1).split() if frontier else []
    parts = []
    for line in text.splitlines():
        found = re.match(r"harness horizon --config (\S+)(.*)$", line.strip())
        if found:
            parts.append((found.group(1), extra if "${frontier[@]}" in found.group(2) else []))
    return parts


@pytest.mark.parametrize("config, extra", _script_parts("reproduce.sh"), ids=lambda v: str(v))
def test_the_committed_horizon_reference_resumes_with_nothing_to_train(config, extra, tmp_path):
    """`bash results/horizons/reproduce.sh` on a fresh clone reads every trial back: none trains."""
    import json
    import shutil

    from harness.cli import main

    part = Path(config).stem
    folder = tmp_path / "results" / "horizons"
    shutil.copytree(ROOT / "results" / "horizons" / part, folder / part)
    shutil.copy(ROOT / config, folder)
    copied = folder / f"{part}.toml"
    copied.write_text(copied.read_text().replace('out = "results/horizons/', f'out = "{folder.as_posix()}/'))
    record, results = ((folder / part / name).read_bytes() for name in ("run.json", "results.csv"))
    assert json.loads(record)["trials"]["planned"] > 0
    assert main(["horizon", "--config", str(copied), *extra, "--quiet", "--no-plot"]) == 0
    # a run that trains a trial rewrites run.json with its own record; one that trains none leaves it
    assert (folder / part / "run.json").read_bytes() == record
    assert (folder / part / "results.csv").read_bytes() == results


def test_the_parts_still_running_plan_every_built_in_model_and_keep_their_trials(tmp_path):
    """reproduce.sh and continue.sh: every part is a valid search; together they cover every built-in
    model on recall, adding, copy, selective copy and MQAR; the frontier runs parts 1 and 2 to
    T = 10,000 (same folders, larger --max-length, a budget that grows above 1000), so their trials
    up to 1000 are read back, not trained again. Each part's committed trials are accepted for
    resuming (same settings and, for every model, the implementation that runs it today: a model
    that moved to another kernel must have its trials rerun)."""
    import shutil

    from harness.cli.commands import sweep_config
    from harness.cli.parser import build_parser
    from harness.registry.loader import get_state
    from harness.runs.horizon import plan_search
    from harness.runs.plan import check_resume, row_key
    from harness.runs.settings import GRID, RUN, SEARCH, TRIAL
    from harness.runs.store import ResultStore

    parts = _script_parts("reproduce.sh") + _script_parts("continue.sh")
    assert [config for config, extra in parts if extra] == ["results/horizons/unidirectional.toml",
                                                            "results/horizons/bidirectional.toml"]
    covered: dict[str, set[str]] = {}
    for config, extra in parts:
        args = build_parser().parse_args(["horizon", "--config", str(ROOT / config), *extra])
        plan = plan_search(sweep_config(args, (GRID, TRIAL, RUN, SEARCH), search=True))
        if extra:
            assert plan.specs[0].steps_growth > 0 and args.max_length == "10000"
        folder = ROOT / plan.out  # the configs' folders are relative to the repository
        if (folder / "results.csv").exists():  # raises HarnessError where `continue.sh` would be refused
            copy = shutil.copytree(folder, tmp_path / folder.name)  # a store may rewrite older files on opening
            state = get_state()
            check_resume(plan, list(ResultStore(copy, key=row_key(state.models, state.tasks)).rows.values()))
        for spec in plan.specs:
            covered.setdefault(spec.task, set()).add(spec.model)
    everything = set(BUILTIN_MODELS) - {"coupled"}  # an alias of cifg
    for task in ("copy", "selective_copy", "mqar"):
        assert covered[task] == everything, task
    for task in ("recall", "adding"):
        assert covered[task] == everything, task


def test_the_chrono_paper_run_resumes_with_nothing_to_train(tmp_path):
    """`bash results/chrono-paper/reproduce.sh` on a fresh clone reads every trial back: none trains."""
    import json
    import shutil

    from harness.cli import main

    folder = tmp_path / "results" / "chrono-paper"
    shutil.copytree(ROOT / "results" / "chrono-paper" / "copy500", folder / "copy500")
    config = folder / "copy500.toml"
    text = (ROOT / "results" / "chrono-paper" / "copy500.toml").read_text()
    config.write_text(text.replace('out = "results/chrono-paper/', f'out = "{folder.as_posix()}/'))
    assert main(["run", "--config", str(config), "--quiet", "--no-plot"]) == 0
    trials = json.loads((folder / "copy500" / "run.json").read_text())["trials"]
    assert trials["ran"] == 0 and trials["skipped"] == trials["planned"] == 4


def test_closing_a_committed_folder_keeps_every_curve(tmp_path):
    """A resume rewrites curves.csv on close; rows whose identity is recomputed (a model gained an option
    since they were written, as chrono_scale) keep their curves, which are keyed on the id written then."""
    import shutil

    from harness.registry.loader import get_state
    from harness.runs.plan import row_key
    from harness.runs.store import ResultStore

    folder = tmp_path / "unidirectional"
    shutil.copytree(ROOT / "results" / "horizons" / "unidirectional", folder)
    before = (folder / "curves.csv").read_text().count("\n")
    state = get_state()
    store = ResultStore(folder, key=row_key(state.models, state.tasks))
    store.close()
    assert (folder / "curves.csv").read_text().count("\n") == before
