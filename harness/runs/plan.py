"""Turn a :class:`~harness.runs.config.SweepConfig` into the list of trials to run, checking every
name, length, option and the device before anything trains.

The grid is models × tasks × lengths × seeds, times every axis: a trial setting given several
values (``--lr 1e-3,1e-2``) or a model/task option given several (``--model-opt NAME:forget_bias=1,3``).
With ``--params N`` each model's hidden size is chosen so that its parameter count is closest to N
(:mod:`harness.runs.sizing`).
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.registry.entries import Entry, Registry
from harness.runs import options as O
from harness.runs import settings as S
from harness.runs.config import SweepConfig
from harness.runs.spec import Key, TrialSpec, config_id, options_from_row, training_budget, values_from_row


@dataclass
class SweepPlan:
    """The resolved trials of a sweep and the folder they go to."""

    config: SweepConfig
    device: str
    out: Path
    models: list[str]
    tasks: list[str]
    lengths: dict[str, list[int]]
    specs: list[TrialSpec]
    workers: int
    axes: list[str] = field(default_factory=list)
    implementations: dict[str, str] = field(default_factory=dict)   # model -> what runs its step
    broken_tasks: dict[str, str] = field(default_factory=dict)      # task -> why it cannot be built

    def settings_summary(self) -> dict[str, Any]:
        """Every trial setting's values (per task where they differ), for run.json."""
        values: dict[str, Any] = {}
        for setting in S.trial_settings():
            per_task = {task: sorted({s.values[setting.name] for s in self.specs if s.task == task}, key=repr)
                        for task in self.tasks}
            merged = {repr(v) for v in per_task.values()}
            values[setting.name] = per_task if len(merged) > 1 else next(iter(per_task.values()), [])
        return values


def default_out_dir() -> Path:
    return Path("results") / datetime.now().strftime("run-%Y%m%d-%H%M%S")


def plan_sweep(config: SweepConfig) -> SweepPlan:
    """Validate everything and list the trials (tasks, lengths, models, seeds, then axes); trains nothing."""
    from harness.registry.loader import get_state

    state = get_state()
    models = _names(config.models, state.models, "--models")
    tasks = _names(config.tasks, state.tasks, "--tasks")
    device = sweep_device(config)
    lengths_table = _by_task(config.lengths, state.tasks, "lengths")
    budget_table = _by_task(config.max_steps, state.tasks, "steps")
    model_options = O.resolve(config.model_options, state.models, models, "--model-opt")
    task_options = O.resolve(config.task_options, state.tasks, tasks, "--task-opt")
    lengths: dict[str, list[int]] = {}
    budgets: dict[str, list[int]] = {}
    rates: dict[str, list[float]] = {}
    broken: dict[str, str] = {}
    for task in tasks:
        probe = _probe_task(state.tasks.get(task), task_options[task][0], lengths_table, broken)
        lengths[task] = _task_lengths(task, lengths_table, probe)
        budgets[task] = _task_budgets(task, budget_table, probe)
        rates[task] = config.lr if config.lr != [None] else [float(getattr(probe, "default_lr", None) or 1e-3)]
        if task not in broken:
            _check_lengths(state.tasks.get(task), lengths[task], task_options[task], broken)
    grid = _Grid(config, state.models, state.tasks, device, model_options, task_options)
    specs = [spec for task in tasks for length in lengths[task] for model in models for seed in config.seeds
             for spec in grid.specs(model, task, length, seed, budgets[task], rates[task])]
    axes = grid.axes(models, tasks, budgets)
    specs = [TrialSpec.build(s.model, s.task, s.length, s.seed, s.values, s.model_options, s.task_options,
                             tuple(axes)) for s in specs]
    out = Path(config.out) if config.out else default_out_dir()
    from harness.runs.executors import resolve_workers

    return SweepPlan(config, device, out, models, tasks, lengths, specs,
                     resolve_workers(config.workers, device, len(specs)), axes,
                     implementations(state.models, models, model_options, device), broken)


def sweep_device(config: SweepConfig) -> str:
    """The trials' device. With ``--executor ray`` Ray must be installed (checked here, before any
    folder exists) and the device is the cluster's (:func:`harness.runs.ray_executor.ray_device`)."""
    from harness.runs.environment import resolve_device

    if config.get("executor") != "ray":
        return resolve_device(config.device)
    from harness.runs.ray_executor import import_ray, ray_device, trial_resources

    import_ray()
    device = ray_device(config.device)
    trial_resources(1, device, config.get("gpus_per_trial"))
    return device


def _names(names: list[str] | None, registry: Registry, flag: str) -> list[str]:
    if names is None:
        chosen = registry.default_sweep()
        if not chosen:
            raise HarnessError(f"no {registry.kind} is registered for the default sweep; give {flag}")
        return chosen
    resolved = []
    for name in names:
        try:
            resolved.append(registry.get(name).name)
        except HarnessError as exc:
            raise HarnessError(f"{flag}: {exc}") from None
    return list(dict.fromkeys(resolved))


def _by_task(value: Any, registry: Registry, option: str) -> Any:
    """A per-task table keyed by canonical task names. A name that is no registered task is an
    error; a known task outside this sweep is simply not used, so one config file can hold the
    budgets of every task and a command can sweep a subset."""
    if not isinstance(value, dict):
        return value
    resolved = {}
    for name, item in value.items():
        try:
            resolved[registry.get(name).name] = item
        except HarnessError as exc:
            raise HarnessError(f"{option}: {exc}") from None
    return resolved


def _probe_task(entry: Entry, options: dict[str, Any], lengths_table: Any, broken: dict[str, str]) -> Any:
    """A built instance of the task (to read its defaults from the task itself, whatever its factory
    is), at the first requested length, else at the smallest length in 1, 2, 4, ... it accepts."""
    given = lengths_table.get(entry.name) if isinstance(lengths_table, dict) else lengths_table
    candidates = [given[0]] if given else [2 ** k for k in range(11)]
    last_error: Exception | None = None
    for length in candidates:
        try:
            return entry.build(length=length, **options)
        except HarnessError as exc:
            last_error = exc
        except Exception as exc:  # noqa: BLE001 (a broken third-party task: its trials become errors, the rest run)
            broken[entry.name] = f"task '{entry.name}' cannot be built: {type(exc).__name__}: {exc}"
            return None
    raise HarnessError(str(last_error))


def _task_lengths(task: str, table: Any, probe: Any) -> list[int]:
    chosen = table.get(task) if isinstance(table, dict) else table
    chosen = chosen or getattr(probe, "default_lengths", None)
    if not chosen:
        raise HarnessError(f"task '{task}' has no default lengths; pass --lengths")
    return sorted({int(n) for n in chosen})


def _task_budgets(task: str, table: Any, probe: Any) -> list[int]:
    chosen = table.get(task) if isinstance(table, dict) else table
    if chosen is None or chosen == [None]:
        return [int(getattr(probe, "default_steps", None) or 1000)]
    return [int(n) for n in chosen]


def _check_lengths(entry: Entry, lengths: list[int], option_sets: list[dict[str, Any]],
                   broken: dict[str, str]) -> None:
    """Build the task at every length and option set: bad lengths are one-line errors now."""
    for length, options in itertools.product(lengths, option_sets):
        try:
            entry.build(length=length, **options)
        except HarnessError:
            raise
        except Exception as exc:  # noqa: BLE001 (as in _probe_task)
            broken[entry.name] = f"task '{entry.name}' cannot be built at T={length}: {type(exc).__name__}: {exc}"
            return


class _Grid:
    """The settings axes of one sweep, expanded into trial specs."""

    def __init__(self, config: SweepConfig, models: Registry, tasks: Registry, device: str,
                 model_options: dict[str, list[dict[str, Any]]], task_options: dict[str, list[dict[str, Any]]]):
        self.config, self.models, self.tasks, self.device = config, models, tasks, device
        self.model_options, self.task_options = model_options, task_options
        self.scalar_axes = [s for s in S.trial_settings() if s.name not in ("max_steps", "lr", "device")]

    def specs(self, model: str, task: str, length: int, seed: int, budgets: list[int],
              rates: list[float]) -> list[TrialSpec]:
        from harness.runs.sizing import matched_hidden_size

        result = []
        value_lists = [self._values(s) for s in self.scalar_axes]
        for budget, lr, combo, m_opts, t_opts in itertools.product(
                budgets, rates, itertools.product(*value_lists), self.model_options[model], self.task_options[task]):
            values = dict(zip((s.name for s in self.scalar_axes), combo))
            values.update(max_steps=budget, lr=lr, device=self.device)
            m_eff = O.effective(self.models.get(model), m_opts)
            t_eff = O.effective(self.tasks.get(task), t_opts)
            if values["params"] is not None:
                values["hidden_size"] = matched_hidden_size(self.models.get(model), m_eff, self.tasks.get(task),
                                                            t_eff, length, values["params"])
            result.append(TrialSpec.build(model, task, length, seed, values, m_eff, t_eff))
        return result

    def _values(self, setting: S.Setting) -> list[Any]:
        value = self.config.get(setting.name, setting.default)
        return value if isinstance(value, list) else [value]

    def axes(self, models: list[str], tasks: list[str], budgets: dict[str, list[int]]) -> list[str]:
        """Names of what varies within a (model, task): settings with several values, then options."""
        names = [s.name for s in self.scalar_axes if len(self._values(s)) > 1]
        if len(self._values(S.BY_NAME["lr"])) > 1:
            names.insert(0, "lr")
        if any(len(b) > 1 for b in budgets.values()):
            names.insert(0, "max_steps")
        for kind, table, swept in (("model", self.model_options, models), ("task", self.task_options, tasks)):
            keys = sorted({k for name in swept for opts in table[name] for k in opts
                           if len({repr(o.get(k)) for o in table[name]}) > 1})
            names += [f"{kind}:{k}" for k in keys]
        return names


def implementations(models: Registry, names: list[str], model_options: dict[str, list[dict[str, Any]]],
                    device: str) -> dict[str, str]:
    """What each model reports as running its step on ``device`` (a tiny build; may load kernels)."""
    found = {}
    for name in names:
        entry = models.get(name)
        try:
            from harness.runs.options import build_core

            core = build_core(entry, 1, 2, 4, model_options[name][0]).to(device)
            found[name] = str(getattr(core, "implementation", "") or "")
        except Exception:  # noqa: BLE001 (a broken model fails in its trials, where the error is recorded)
            found[name] = ""
    return found


# --------------------------------------------------------------------------------------------
# Resume: rows already in the folder, and settings that must not change


def row_key(models: Registry, tasks: Registry):
    """A key function for the rows of a folder: rows written before ``config_id`` existed, or
    with options recorded before the builder gained new ones, get the identity they would have now.
    Such a row also gets those options recorded (the new one at its default, which is what the trial
    ran), so that its options say what its identity says: reports and figures then group it with the
    trials of the same setting written since."""
    def key(row: dict[str, Any]) -> Key:
        model, task = str(row["model"]), str(row["task"])
        for kind, name, registry in (("model", model, models), ("task", task, tasks)):
            recorded = options_from_row(row, f"{kind}_options")
            with contextlib.suppress(Exception):  # one no longer installed keeps its recorded options
                current = O.effective(registry.get(name), recorded)
                if current != recorded:
                    row[f"{kind}_options"] = O.canonical(current)
        m_opts, t_opts = options_from_row(row, "model_options"), options_from_row(row, "task_options")
        return (model, task, int(row["length"]), int(row["seed"]), config_id(values_from_row(row), m_opts, t_opts))
    return key


def check_resume(plan: SweepPlan, rows: list[dict[str, Any]], trains: bool = True) -> None:
    """Refuse a folder whose trials share no value of some setting with this command.

    Growing an axis (``--lr 1e-3,1e-2`` over a folder made at ``1e-3``) or running part of one is
    allowed; a setting changed outright (``--steps 500`` over a folder made at 1000) is an error,
    as is a model whose implementation (e.g. fused kernels or eager equations) changed. Settings
    outside the identity that must still match (``--threads``) are compared only when the command
    ``trains`` something, and only with rows that record them: a resume with nothing to train mixes
    no numbers, and rows written before the column existed have no known value.
    """
    if not rows:
        return
    problems = _unmatched(plan, rows) + _other_budgets(plan, rows) if trains else []
    for setting in S.identity_settings():
        for task in plan.tasks:
            before = {repr(values_from_row(r)[setting.name]) for r in rows if r["task"] == task}
            now = {repr(s.values[setting.name]) for s in plan.specs if s.task == task}
            if before and now and not before & now:
                problems.append(f"{setting.cli_flag} {_show(before)} -> {_show(now)}"
                                + (f" for task {task}" if setting.per_task else ""))
    problems += _changed_options(plan, rows)
    for model, current in plan.implementations.items():
        recorded = {r.get("implementation") or "" for r in rows if r["model"] == model} - {""}
        if current and recorded and current not in recorded:
            problems.append(f"{model} ran on {_show(recorded)}, now {current}")
    problems = list(dict.fromkeys(problems))
    if problems:
        raise HarnessError(f"output folder {plan.out} holds trials with different settings ({'; '.join(problems)}); "
                           f"use a new --out, the folder's values to resume, or a list that includes them to add "
                           f"an axis (e.g. --lr 0.001,0.01)")


def _unmatched(plan: SweepPlan, rows: list[dict[str, Any]]) -> list[str]:
    """``must_match`` settings whose recorded values (where recorded) do not include this command's."""
    problems = []
    for setting in S.matched_settings():
        recorded = [r for r in rows if _given(r.get(setting.column_name))]
        before = {repr(values_from_row(r)[setting.name]) for r in recorded}
        now = {repr(s.values[setting.name]) for s in plan.specs}
        if before and now and not now <= before:
            problems.append(f"{setting.cli_flag} {_show(before)} -> {_show(now)}")
    return problems


def _other_budgets(plan: SweepPlan, rows: list[dict[str, Any]]) -> list[str]:
    """Rows this command would reuse although they trained for another budget than it gives at their T.

    The budget rule (``--steps-growth``/``--steps-from``) is not part of a trial's identity, so that a
    search extended beyond a finished one keeps its trials; rows above the new ``--steps-from`` that
    were trained without the rule (or with another) must therefore be caught here."""
    if not plan.specs:
        return []
    growth, start = plan.specs[0].steps_growth, plan.specs[0].steps_from
    for row in rows:
        values = values_from_row(row)
        if not isinstance(values["max_steps"], int) or not isinstance(values["eval_every"], int):
            continue
        expected = training_budget(values["max_steps"], int(row["length"]), values["eval_every"], growth, start)
        raw = row.get("budget")
        recorded = int(float(str(raw))) if _given(raw) else values["max_steps"]  # rows older than the column
        if recorded != expected:
            return [f"{row['model']} {row['task']} T={row['length']} was trained for {recorded} steps, this "
                    f"command's budget there is {expected} (--steps-growth {growth:g} --steps-from {start})"]
    return []


def _given(raw: Any) -> bool:
    return raw is not None and raw == raw and not (isinstance(raw, str) and not raw.strip())


def _changed_options(plan: SweepPlan, rows: list[dict[str, Any]]) -> list[str]:
    """Model and task options whose values in the folder and in this command do not overlap."""
    from harness.registry.loader import get_state

    state = get_state()
    problems = []
    for kind, names, registry, flag in (("model", plan.models, state.models, "--model-opt"),
                                        ("task", plan.tasks, state.tasks, "--task-opt")):
        column = f"{kind}_options"
        for name in names:
            before_opts = [O.effective(registry.get(name), options_from_row(r, column))
                           for r in rows if r[kind] == name]
            now_opts = [getattr(s, column) for s in plan.specs if getattr(s, kind) == name]
            for key in sorted({k for o in before_opts + now_opts for k in o}):
                before = {repr(o.get(key)) for o in before_opts}
                now = {repr(o.get(key)) for o in now_opts}
                if before_opts and now_opts and not before & now:
                    problems.append(f"{flag} {name}:{key} {_show(before)} -> {_show(now)}")
    return problems


def _show(values: set[str]) -> str:
    return ",".join(sorted(values))
