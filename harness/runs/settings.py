"""Every setting of a sweep, declared once.

Each :class:`Setting` says its name, how a value is parsed and checked, its default, its help and
its role. Everything else is derived from the list below: the command-line options of
``harness run``/``horizon``/``gradients`` (:func:`add_arguments`), the TOML keys of ``--config``
(:func:`check_keys`), the trial spec (:class:`harness.runs.spec.TrialSpec` holds the trial
settings by name), the resume comparison and a trial's identity (:func:`identity_settings`) and
the columns of ``results.csv`` (:func:`result_columns`). Adding a setting is one entry here;
``tests/test_settings.py`` proves that every layer sees it.

Roles:

* ``grid``: what a sweep covers (models, tasks, lengths, seeds);
* ``trial``: how one trial trains. Recorded in every result row; part of the trial's identity
  (unless ``identity=False``, for settings that change what is measured but not the numbers);
  with ``axis=True`` a list of values makes an axis of the sweep (``--lr 1e-3,1e-2``). A setting
  with ``must_match=True`` (``threads``; the budget rule ``steps_growth``/``steps_from``, which
  leaves every trial at T <= ``steps_from`` as it was) is not part of the identity, so folders
  written before it was recorded keep theirs; a resume that would train new trials with another
  value than the folder's rows record is refused (:func:`harness.runs.plan.check_resume`);
* ``run``: how the sweep executes (workers, executor, output folder): never changes a number;
* ``search``: the adaptive length search of ``harness horizon``.
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from harness.errors import HarnessError

GRID, TRIAL, RUN, SEARCH = "grid", "trial", "run", "search"


# --------------------------------------------------------------------------------------------
# Parsers: one raw value (from TOML or command-line text) to a checked value, or a one-line error


def _number(value: Any, what: str, kind: type) -> float | int:
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if kind is int else float(text)
        except ValueError:
            raise HarnessError(f"{what}: '{text}' is not {'an integer' if kind is int else 'a number'}") from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise HarnessError(f"{what}: expected {'an integer' if kind is int else 'a number'}, got {value!r}")
    if not math.isfinite(float(value)):
        raise HarnessError(f"{what}: {value!r} is not a finite number")
    if kind is int:
        if not float(value).is_integer():
            raise HarnessError(f"{what}: {value!r} is not an integer")
        return int(float(value))
    return float(value)


def _checked(kind: type, accept: Callable[[float], bool], problem: str) -> Callable[[Any, str], Any]:
    """A parser of one number of ``kind`` (finite, or a one-line error) that ``accept`` must hold for."""
    def parse(value: Any, what: str) -> Any:
        number = _number(value, what, kind)
        if not accept(number):
            raise HarnessError(f"{what}: {number!r} {problem}")
        return number
    return parse


positive_int = _checked(int, lambda n: n > 0, "is not a positive integer")
non_negative_int = _checked(int, lambda n: n >= 0, "is negative")
positive_float = _checked(float, lambda x: x > 0, "is not a positive number")
non_negative_float = _checked(float, lambda x: x >= 0, "is negative")
fraction = _checked(float, lambda x: 0.0 < x <= 1.0, "is not in (0, 1]")
ratio_above_one = _checked(float, lambda x: x > 1.0, "must be greater than 1")


def text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise HarnessError(f"{what}: expected a non-empty string, got {value!r}")
    return value.strip()


def flag(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise HarnessError(f"{what}: expected true or false, got {value!r}")


def workers(value: Any, what: str) -> int | str:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    return non_negative_int(value, what)


def seconds_or_off(value: Any, what: str) -> float | str:
    if isinstance(value, str) and value.strip().lower() == "off":
        return "off"
    return non_negative_float(value, what)


#: ``--optimizer`` names: Adam (the default) and RMSprop with smoothing α = 0.9, as Tallec & Ollivier (2018)
#: trained their copy and adding experiments.
OPTIMIZERS = ("adam", "rmsprop")


def optimizer(value: Any, what: str) -> str:
    name = text(value, what).lower()
    if name not in OPTIMIZERS:
        raise HarnessError(f"{what}: unknown optimizer '{name}'; choose {' or '.join(OPTIMIZERS)}")
    return name


def executor(value: Any, what: str) -> str:
    name = text(value, what).lower()
    if name not in ("local", "ray"):
        raise HarnessError(f"{what}: unknown executor '{name}'; choose local or ray")
    return name


def step_list(value: Any, what: str) -> str:
    """Training steps as canonical text, e.g. ``0,200,end`` (0: initialisation; end: the last step)."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    steps, end = set(), False
    for item in items:
        if isinstance(item, str) and item.strip().lower() == "end":
            end = True
        elif not (isinstance(item, str) and not item.strip()):
            steps.add(non_negative_int(item, what))
    if not steps and not end:
        raise HarnessError(f"{what}: expected steps such as 0,200,end")
    return ",".join([str(s) for s in sorted(steps)] + (["end"] if end else []))


def stop_rule(value: Any, what: str) -> str:
    """``solved`` (validation score ≥ threshold), ``never``, or a horizon criterion (checked when used)."""
    from harness.analysis.criteria import Criterion

    rule = text(value, what).lower()
    if rule in ("solved", "never", "default"):
        return rule
    try:
        return str(Criterion.parse(rule))
    except HarnessError as exc:
        raise HarnessError(f"{what}: {exc}") from None


def criterion(value: Any, what: str) -> str:
    """``default`` (each task's own) or a criterion such as ``normalised:0.9`` (harness.analysis.criteria)."""
    rule = stop_rule(value, what)
    if rule == "never":
        raise HarnessError(f"{what}: 'never' is not a criterion")
    return rule


def name_list(value: Any, what: str) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise HarnessError(f"{what}: expected a comma list of names, got {value!r}")
    names = []
    for item in items:
        if not isinstance(item, str):
            raise HarnessError(f"{what}: expected names, got {item!r}")
        if item.strip():
            names.append(item.strip())
    if not names:
        raise HarnessError(f"{what}: empty list")
    return list(dict.fromkeys(names))


def length_list(value: Any, what: str) -> list[int]:
    items = value.split(",") if isinstance(value, str) else value
    if isinstance(items, numbers.Integral) and not isinstance(items, bool):
        items = [items]
    if not isinstance(items, (list, tuple)):
        raise HarnessError(f"{what}: expected a list of positive integers, got {value!r}")
    lengths = [positive_int(item, what) for item in items if not (isinstance(item, str) and not item.strip())]
    if not lengths:
        raise HarnessError(f"{what}: empty list")
    return sorted(set(lengths))


def seed_list(value: Any, what: str) -> list[int]:
    """A count N means seeds 0..N-1; a list (or comma text) lists the seeds themselves."""
    if isinstance(value, str) and "," not in value:
        value = positive_int(value, f"{what} (a count N, or a comma list of seeds)")
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return list(range(positive_int(value, what)))
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise HarnessError(f"{what}: expected a count or a list of integers, got {value!r}")
    seeds = [non_negative_int(item, what) for item in items if not (isinstance(item, str) and not item.strip())]
    if not seeds or len(set(seeds)) != len(seeds):
        raise HarnessError(f"{what}: expected distinct non-negative integers, got {value!r}")
    return seeds


Parser = Callable[[Any, str], Any]


# --------------------------------------------------------------------------------------------
# The declaration


@dataclass(frozen=True)
class Setting:
    """One setting: its parser, default, help and role; CLI flag, TOML key and column derive from it."""

    name: str
    parse: Parser
    default: Any
    help: str
    role: str
    metavar: str = "X"
    axis: bool = False       # a list of values is an axis of the sweep
    per_task: bool = False   # may be a table TASK -> value(s)
    identity: bool = True    # (trial settings) part of a trial's identity and the resume check
    must_match: bool = False  # (trial settings, identity=False) trials still to run must share the folder's value
    flag: str = ""           # command-line flag; default --name-with-dashes
    key: str = ""            # TOML key; default the name
    column: str = ""         # results.csv column (trial settings); default the name
    boolean: bool = False    # a command-line switch without a value
    aliases: tuple[str, ...] = ()  # other command-line flags for the same option
    example: Any = None      # a valid value other than the default (tests push it through every layer)
    #: (identity settings added after results were committed) left out of a trial's identity while it
    #: has its default value, so trials recorded before the setting existed keep their identity
    added_later: bool = False

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def toml_key(self) -> str:
        return self.key or self.name

    @property
    def column_name(self) -> str:
        return self.column or self.name

    def values(self, raw: Any, what: str | None = None) -> Any:
        """Parse a raw value: a list of values for an axis setting, a table for a per-task one."""
        what = what or self.toml_key
        if self.per_task and _is_table(raw):
            table = _as_table(raw, what)
            if not table:
                raise HarnessError(f"{what}: empty table")
            return {task: self._one_or_axis(value, f"{what}.{task}") for task, value in table.items()}
        return self._one_or_axis(raw, what)

    def _one_or_axis(self, raw: Any, what: str) -> Any:
        if not self.axis:
            return self.parse(raw, what)
        items = _split_axis(raw)
        values = [self.parse(item, what) for item in items]
        if not values:
            raise HarnessError(f"{what}: empty list")
        return list(dict.fromkeys(values))

    def default_text(self) -> str:
        if self.default is None:
            return {"max_steps": "each task's own budget", "lengths": "each task's own sweep",
                    "lr": "each task's own, 1e-3 unless it declares another (adding: 1e-2)",

                    "models": "the models registered for the default sweep",
                    "tasks": "the tasks registered for the default sweep"}.get(self.name, "none")
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        return str(self.default)


def _is_table(raw: Any) -> bool:
    return isinstance(raw, dict) or (isinstance(raw, str) and "=" in raw)


def _as_table(raw: Any, what: str) -> dict[str, Any]:
    if isinstance(raw, dict):
        return dict(raw)
    table: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        task, sep, value = part.partition("=")
        if not sep or not task.strip() or not value.strip():
            raise HarnessError(f"{what}: '{part}' is not TASK=VALUE (expected e.g. recall=1000,adding=3000)")
        table[task.strip()] = value.strip()
    return table


def _split_axis(raw: Any) -> list[Any]:
    if isinstance(raw, (list, tuple)):
        return list(raw)
    if isinstance(raw, str):
        return [part for part in (p.strip() for p in raw.split(",")) if part]
    return [raw]


SETTINGS: tuple[Setting, ...] = (
    # -- the grid ---------------------------------------------------------------------------------
    Setting("models", name_list, None, "comma list of models", GRID, metavar="LIST", example=["model_a", "model_b"]),
    Setting("tasks", name_list, None, "comma list of tasks", GRID, metavar="LIST", aliases=("--task",),
            example=["recall"]),
    Setting("lengths", length_list, None, "comma list of dependency lengths T (a config file may "
            "give a table with one list per task)", GRID, metavar="LIST", per_task=True, aliases=("--length",),
            example=[7, 9]),
    Setting("seeds", seed_list, 2, "a count N (seeds 0..N-1) or a comma list", GRID, metavar="N|LIST", example=[3, 5]),
    # -- how each trial trains --------------------------------------------------------------------
    Setting("max_steps", positive_int, None, "training budget in steps (a trial may stop earlier: "
            "--early-stop); one value, a list (an axis), or per task: recall=1000,adding=3000", TRIAL,
            metavar="N|TASK=N,...", axis=True, per_task=True, flag="--steps", key="steps", example=7),
    Setting("steps_growth", non_negative_float, 0.0, "for trials longer than --steps-from, the budget grows by "
            "this fraction of --steps per doubling of T (0.5: 1500 steps at T = 1000 become 2250 at 2000 and 3000 "
            "at 4000), rounded up to whole evaluation intervals; each row records its budget", TRIAL, example=0.5,
            identity=False, must_match=True),
    Setting("steps_from", positive_int, 1000, "the length T above which --steps-growth adds to the budget",
            TRIAL, metavar="T", identity=False, must_match=True, example=500),
    Setting("batch_size", positive_int, 64, "training batch size", TRIAL, metavar="N", axis=True, example=9),
    Setting("hidden_size", positive_int, 128, "hidden units H (ignored with --params)", TRIAL,
            metavar="N", axis=True, example=11),
    Setting("params", positive_int, None, "choose each model's H so that its parameter count "
            "(recurrent core and head) is closest to N", TRIAL, metavar="N", axis=True,
            column="params_target", example=5000),
    Setting("lr", positive_float, None, "learning rate; a list is an axis (--lr 1e-3,1e-2)", TRIAL,
            axis=True, example=0.02),
    Setting("optimizer", optimizer, "adam", "adam, or rmsprop (smoothing 0.9, as Tallec & Ollivier 2018); "
            "a list is an axis", TRIAL, metavar="NAME", axis=True, example="rmsprop", added_later=True),
    Setting("clip", positive_float, 1.0, "gradient-norm clipping, after backward() and before the step",
            TRIAL, axis=True, example=0.5),
    Setting("eval_every", positive_int, 100, "evaluate every N steps", TRIAL, metavar="N", axis=True, example=3),
    Setting("eval_size", positive_int, 512, "sequences in each of the validation and test sets",
            TRIAL, metavar="N", axis=True, example=33),
    Setting("threshold", fraction, 0.99, "score that counts as solved (a trial stops once its validation "
            "score reaches it, with --early-stop solved)", TRIAL, axis=True, example=0.9),
    Setting("early_stop", stop_rule, "solved", "when a trial stops before its budget: solved (validation score "
            ">= threshold), never, or a horizon criterion met on validation: default, normalised[:LEVEL], "
            "loss[:FRACTION] (default: solved; in harness horizon, the search criterion)", TRIAL,
            metavar="RULE", axis=True, example="never"),
    Setting("device", text, "auto", "auto|cpu|cuda[:N]|mps", TRIAL, metavar="DEV", example="cpu"),
    Setting("grad_at", step_list, None, "measure gradient flow at these training steps (0: at "
            "initialisation; end: the last step) into gradients.csv", TRIAL, metavar="STEPS", example="0,end"),
    Setting("grad_stats", flag, False, "also measure gradient flow (norm ratio, decay rate) at every "
            "evaluation, into curves.csv", TRIAL, identity=False, boolean=True, example=True),
    Setting("threads", positive_int, 1, "torch threads per CPU trial; the same count gives the same numbers "
            "whatever --workers and --executor (another count may change the last digits)", TRIAL, metavar="N",
            identity=False, must_match=True, example=2),
    # -- how the sweep executes -------------------------------------------------------------------
    Setting("workers", workers, "auto", "parallel trial processes (auto: one worker per core on CPU, "
            "one on a GPU; 0: in this process, without isolation); each trial runs --threads threads", RUN,
            metavar="N|auto", example=1),
    Setting("trial_timeout", positive_float, None, "a trial still running after this many seconds is "
            "stopped and recorded as an error", RUN, metavar="SECONDS", example=600.0),
    Setting("hang_after", non_negative_float, 600.0, "a trial that makes no progress (no training step or "
            "evaluation) for this many seconds, or for 10 times the slowest progress interval seen in the sweep "
            "if that is longer, is stopped as hung and recorded as an error (local workers; 0: never)", RUN,
            metavar="SECONDS", example=30.0),
    Setting("checkpoint_every", seconds_or_off, 60.0, "a running trial saves a checkpoint at its next evaluation "
            "once this many seconds have passed since the last one, into the run folder's checkpoints/; a stopped "
            "sweep resumes such a trial from it, with the numbers of an uninterrupted run (0: at every evaluation; "
            "off: never)", RUN, metavar="SECONDS", example=0.0),
    Setting("executor", executor, "local", "local (a pool of processes on this machine) or ray", RUN,
            metavar="NAME", example="ray"),
    Setting("ray_address", text, None, "with --executor ray: a cluster address, or auto to join the "
            "running one (default: start a local Ray instance)", RUN, metavar="ADDRESS", example="auto"),
    Setting("gpus_per_trial", positive_float, None, "with --executor ray: GPUs each trial requests "
            "(default: 1 with --device cuda, else 0)", RUN, metavar="X", example=0.5),
    Setting("out", text, None, "output folder (default: results/run-DATE-TIME); reuse it to resume", RUN,
            metavar="DIR", example="results/example"),
    # -- the adaptive length search (harness horizon) --------------------------------------------
    Setting("min_length", positive_int, 5, "first length tried", SEARCH, metavar="T", example=3),
    Setting("max_length", positive_int, 1000, "longest length tried", SEARCH, metavar="T", example=50),
    Setting("growth", ratio_above_one, 2.0, "factor by which T grows until the first failure", SEARCH, example=3.0),
    Setting("resolution", ratio_above_one, 1.25, "bisect (in log T) until first failure / horizon "
            "is at most this ratio", SEARCH, example=1.5),
    Setting("criterion", criterion, "default", "what counts as remembering: default (each task's own), "
            "solved, normalised[:LEVEL], loss[:FRACTION]", SEARCH, metavar="NAME", example="solved"),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
OPTION_TABLES = ("model_options", "task_options")  # --model-opt / --task-opt, see harness.runs.options


def by_role(*roles: str) -> list[Setting]:
    return [s for s in SETTINGS if s.role in roles]


def trial_settings() -> list[Setting]:
    return by_role(TRIAL)


def identity_settings() -> list[Setting]:
    """The trial settings that determine a trial's numbers: its identity and the resume check."""
    return [s for s in SETTINGS if s.role == TRIAL and s.identity]


def matched_settings() -> list[Setting]:
    """Trial settings outside the identity that trials still to run must share with the folder's rows."""
    return [s for s in SETTINGS if s.role == TRIAL and s.must_match]


def axis_settings() -> list[Setting]:
    return [s for s in SETTINGS if s.axis]


def result_columns() -> list[str]:
    """The ``results.csv`` column of every trial setting, in declaration order."""
    return [s.column_name for s in trial_settings()]


def toml_keys(roles: Sequence[str]) -> dict[str, Setting]:
    return {s.toml_key: s for s in by_role(*roles)}


# --------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser, roles: Sequence[str], skip: Iterable[str] = ()) -> None:
    """Add one option per setting of ``roles`` (values stay text; :func:`normalise` parses them)."""
    skipped = set(skip)
    for setting in by_role(*roles):
        if setting.name in skipped:
            continue
        help_text = setting.help
        if "(default:" not in help_text:
            help_text += f" (default: {setting.default_text()})"
        if setting.boolean:
            parser.add_argument(setting.cli_flag, dest=setting.name, action="store_true", default=None,
                                help=help_text)
            continue
        parser.add_argument(setting.cli_flag, *setting.aliases, dest=setting.name, metavar=setting.metavar,
                            default=None, help=help_text)


def values_from_args(args: argparse.Namespace, roles: Sequence[str]) -> dict[str, Any]:
    """The settings given on the command line, keyed by TOML key (unset options are left out)."""
    values = {}
    for setting in by_role(*roles):
        value = getattr(args, setting.name, None)
        if value is not None:
            values[setting.toml_key] = value
    return values


# --------------------------------------------------------------------------------------------
# Checking and normalising raw values (file < command line), as one dict keyed by setting name


def check_keys(raw: dict[str, Any], roles: Sequence[str], source: str) -> None:
    """Unknown keys are a one-line error listing the known ones."""
    known = set(toml_keys(roles)) | set(OPTION_TABLES)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise HarnessError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")


def normalise(raw: dict[str, Any], roles: Sequence[str]) -> dict[str, Any]:
    """Parse every setting of ``roles`` from ``raw`` (keyed by TOML key), filling in defaults.

    Axis settings become lists, per-task settings may stay tables; the option tables are copied.
    """
    check_keys(raw, roles, "settings")
    values: dict[str, Any] = {}
    for setting in by_role(*roles):
        if setting.toml_key in raw and raw[setting.toml_key] is not None:
            values[setting.name] = setting.values(raw[setting.toml_key])
        elif setting.default is None:
            values[setting.name] = [None] if setting.axis else None
        else:
            values[setting.name] = setting.values(setting.default)
    for table in OPTION_TABLES:
        options = raw.get(table, {})
        if not isinstance(options, dict):
            raise HarnessError(f"{table}: expected a table of options")
        values[table] = options
    if values.get("params", [None]) != [None] and "hidden_size" in raw:
        raise HarnessError("hidden_size and params cannot both be given: --params chooses H for each model")
    return values
