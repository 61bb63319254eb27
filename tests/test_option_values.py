"""Option values checked before anything trains, comma lists that hide a second option, and error
texts without machine paths (issue #19, items 3 and 4)."""

from __future__ import annotations

import re
from typing import Literal

import pandas as pd
import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.runs.option_types import builder_checks, check_values
from harness.runs.options import parse_items
from harness.runs.portable import portable_text

TINY = ["--lengths", "3", "--seeds", "1", "--steps", "4", "--eval-every", "2", "--eval-size", "16",
        "--hidden-size", "4", "--batch-size", "4", "--no-plot", "--quiet"]

PLUGIN = '''
from __future__ import annotations
import os
from typing import Literal
from torch import nn
from harness import hookimpl


class Scan(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, mode: Literal["scan", "loop"] = "scan",
                 depth: int | None = None, gain=1.0, fail: bool = False):
        super().__init__()
        if fail:
            raise ValueError(f"cannot read {os.path.abspath(__file__)}")
        self.rnn = nn.GRU(input_size, hidden_size, batch_first=True)
        self.output_size = hidden_size
    def forward(self, x):
        y, _ = self.rnn(x)
        return y, y[:, -1]


@hookimpl
def register_models(register):
    register("scanner", Scan, description="a model with declared choices")
'''


@pytest.fixture
def plugin(tmp_path):
    path = tmp_path / "scanner_plugin.py"
    path.write_text(PLUGIN)
    return str(path)


def build(input_size: int, hidden_size: int, mode: Literal["scan", "loop"] = "scan", depth: int | None = None,
          rate: float = 1.0, flag=True, anything=None, named: dict[str, int] | None = None):
    """Annotations as text (``from __future__ import annotations`` above): resolved, then checked."""


@pytest.mark.parametrize("key, good, bad, accepted", [
    ("mode", ["scan", "loop"], ["parallel", 1], "one of 'scan', 'loop'"),
    ("depth", [3, None], [2.5, "3x"], "an integer or None"),
    ("rate", [1, 0.5], ["abc", True], "a number"),
    ("flag", [False], ["yes", 0], "true or false"),       # no annotation: the default's type
    ("anything", ["x", 1, [1]], [], ""),                    # default None, no annotation: anything
    ("named", [{"a": 1}, None], [[1]], "a table or None"),
])
def test_values_are_checked_against_annotations_and_defaults(key, good, bad, accepted):
    check = builder_checks(build)[key]
    assert [check(v) for v in good] == [None] * len(good)
    assert [check(v) for v in bad] == [accepted] * len(bad)


def test_a_bad_value_is_one_line_naming_option_value_and_what_is_accepted():
    with pytest.raises(HarnessError) as info:
        check_values("model", "m", build, {"mode": ["scan", "parallel"]}, "--model-opt")
    assert str(info.value) == ("--model-opt m:mode: 'parallel' is not accepted by model 'm'; "
                               "expected one of 'scan', 'loop'")


@pytest.mark.parametrize("args, fragment", [
    (["--models", "lstm", "--task", "adding", "--model-opt", "lstm:forget_bias=abc"],
     "--model-opt lstm:forget_bias: 'abc' is not accepted by model 'lstm'; expected a number"),
    (["--models", "lstm,cifg", "--task", "adding", "--model-opt", "init=1"],
     "--model-opt lstm:init: 1 is not accepted by model 'lstm'; expected a string"),
    (["--models", "lstm", "--task", "recall", "--task-opt", "key_position=3"],
     "--task-opt recall:key_position: 3 is not accepted by task 'recall'; expected a string"),
    (["--models", "scanner", "--task", "adding", "--model-opt", "scanner:mode=parallel"],
     "'parallel' is not accepted by model 'scanner'; expected one of 'scan', 'loop'"),
    (["--models", "scanner", "--task", "adding", "--model-opt", "scanner:gain=fast"],
     "'fast' is not accepted by model 'scanner'; expected a number"),
    (["--models", "lstm", "--task", "adding", "--task-opt", "num_tokens=1,vocab_size=2"],
     "'vocab_size=2' is a second option inside one comma list (commas separate values of one option); "
     "repeat the flag instead: --task-opt num_tokens=1 --task-opt vocab_size=2"),
])
def test_bad_option_values_stop_the_command_before_any_folder_or_training(args, fragment, tmp_path, capsys, plugin):
    out = tmp_path / "run"
    assert main(["run", "--plugin", plugin, *args, *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err, err
    assert not out.exists()


@pytest.mark.parametrize("item, expected", [
    ("forget_bias=1,3", {"forget_bias": [1, 3]}),                 # an axis
    ("lstm:forget_bias=1,3", {"lstm": {"forget_bias": [1, 3]}}),
    ("label='a=b,c'", {"label": "a=b,c"}),                        # a quoted value keeps its commas
    ("sizes=[1,2]", {"sizes": [[1, 2]]}),
])
def test_comma_lists_of_values_still_make_axes(item, expected):
    assert parse_items([item], "--model-opt") == expected


def test_accepted_values_run_and_stored_errors_carry_no_machine_path(tmp_path, plugin):
    out = tmp_path / "run"
    code = main(["run", "--plugin", plugin, "--models", "scanner,rnn", "--task", "adding", "--model-opt",
                 "scanner:mode=loop", "--model-opt", "scanner:fail=true", "--workers", "0", *TINY,
                 "--out", str(out)])
    assert code == 1
    rows = pd.read_csv(out / "results.csv").set_index("model")
    assert rows.loc["rnn", "status"] == "ok" and rows.loc["scanner", "status"] == "error"
    error = rows.loc["scanner", "error"]
    assert error == "ValueError: cannot read scanner_plugin.py (at scanner_plugin.py:14)", error
    assert str(tmp_path) not in error and not re.search(r"(^|[\s(])/\w", error), error


def test_portable_text_keeps_what_is_not_a_machine_path():
    import harness.runs.training as training

    text = f"boom (at {training.__file__}:12) in /tmp/x/y/cache.so; 1/2 of a/b; /usr"
    assert portable_text(text) == "boom (at harness/runs/training.py:12) in cache.so; 1/2 of a/b; /usr"
