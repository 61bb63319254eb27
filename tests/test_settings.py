"""The one settings declaration and everything derived from it; axes; parameter matching (issue #12)."""

from __future__ import annotations

import io
import json
import math

import pandas as pd
import pytest

from harness.cli import build_parser, main
from harness.errors import HarnessError
from harness.runs import settings as S
from harness.runs.config import SweepConfig, load_config_file
from harness.runs.schema import RESULT_COLUMNS
from harness.runs.spec import TrialSpec, values_from_row
from harness.runs.training import base_row

COMMAND_ROLES = {"run": (S.GRID, S.TRIAL, S.RUN), "horizon": (S.GRID, S.TRIAL, S.RUN, S.SEARCH)}


def _cli_text(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def test_every_setting_reaches_the_cli_toml_spec_resume_check_and_columns(tmp_path):
    """One test for the whole chain: a setting declared once is seen by every layer."""
    parser = build_parser()
    for setting in S.SETTINGS:
        value = setting.values(setting.example)
        assert value != setting.values(setting.default) if setting.default is not None else True, setting.name
        for command, roles in COMMAND_ROLES.items():
            if setting.role not in roles or (command == "horizon" and setting.name == "lengths"):
                continue
            argv = [command, setting.cli_flag] if setting.boolean else [command, setting.cli_flag,
                                                                        _cli_text(setting.example)]
            args = parser.parse_args(argv)  # the CLI has the option ...
            raw = S.values_from_args(args, roles)
            assert SweepConfig.from_raw(raw, roles).get(setting.name) == value, (command, setting.name)
        config = tmp_path / f"{setting.name}.toml"  # ... the TOML key ...
        config.write_text(f"{setting.toml_key} = {json.dumps(setting.example)}\n")
        roles = COMMAND_ROLES["horizon"]
        assert SweepConfig.from_raw(load_config_file(config, roles), roles).get(setting.name) == value
        if setting.role != S.TRIAL:
            continue
        one = value[0] if isinstance(value, list) else value
        spec = TrialSpec.build("lstm", "recall", 5, 0, {setting.name: one})
        assert getattr(spec, setting.name) == one                      # ... the trial spec ...
        row = base_row(spec)
        assert setting.column_name in RESULT_COLUMNS and setting.column_name in row  # ... the columns ...
        assert values_from_row({k: str(v) for k, v in row.items()})[setting.name] == one
        default = TrialSpec.build("lstm", "recall", 5, 0, {})
        if setting.identity:                                           # ... and the resume check
            assert spec.config_id != default.config_id, setting.name
            assert setting in S.identity_settings()
        else:
            assert spec.config_id == default.config_id, setting.name


def test_identity_settings_changed_outright_are_refused_on_resume(tmp_path):
    from harness.runs.plan import SweepPlan, check_resume

    for setting in S.identity_settings():
        one = setting.values(setting.example)
        one = one[0] if isinstance(one, list) else one
        before = TrialSpec.build("lstm", "recall", 5, 0, {})
        after = TrialSpec.build("lstm", "recall", 5, 0, {setting.name: one})
        plan = SweepPlan(SweepConfig({}), "cpu", tmp_path, ["lstm"], ["recall"], {"recall": [5]}, [after], 1)
        with pytest.raises(HarnessError, match=setting.cli_flag.replace("-", r"\-")):
            check_resume(plan, [{k: str(v) for k, v in base_row(before).items()}])


def test_unknown_config_keys_list_the_known_ones(tmp_path):
    config = tmp_path / "x.toml"
    config.write_text("learning_rate = 0.1\n")
    with pytest.raises(HarnessError, match="unknown key.*learning_rate.*known keys: .*lr"):
        load_config_file(config, COMMAND_ROLES["run"])


# -- axes ------------------------------------------------------------------------------------------------------

TINY = ["--seeds", "1", "--eval-every", "10", "--eval-size", "64", "--batch-size", "16", "--hidden-size", "8",
        "--workers", "0", "--no-plot", "--quiet"]


def test_a_learning_rate_axis_and_best_of_selection(tmp_path, capsys):
    out = tmp_path / "lr"
    assert main(["run", "--models", "lstm,gru", "--task", "recall", "--lengths", "10", "--steps", "50",
                 "--lr", "1e-3,1e-2", *TINY, "--out", str(out)]) == 0
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 4 and sorted(results["lr"].unique()) == [0.001, 0.01]
    assert results["config_id"].nunique() == 4
    capsys.readouterr()
    assert main(["report", str(out), "--select", "best", "--format", "csv"]) == 0
    best = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert len(best) == 2 and {"model", "task", "length", "lr", "score_mean"} <= set(best.columns)
    for row in best.itertuples():  # the chosen rate is the one with the best validation score
        mine = results[results["model"] == row.model]
        assert row.lr == mine.loc[mine["val_score"].idxmax(), "lr"]
    # the axis can grow in the same folder; a rate given outright instead is refused
    assert main(["run", "--models", "lstm,gru", "--task", "recall", "--lengths", "10", "--steps", "50",
                 "--lr", "1e-3,1e-2,3e-3", *TINY, "--out", str(out)]) == 0
    assert len(pd.read_csv(out / "results.csv")) == 6
    assert main(["run", "--models", "lstm", "--task", "recall", "--lengths", "10", "--steps", "50",
                 "--lr", "5e-2", *TINY, "--out", str(out)]) == 2


def test_a_model_option_axis(tmp_path):
    out = tmp_path / "fb"
    assert main(["run", "--models", "lstm,rnn", "--task", "recall", "--lengths", "5", "--steps", "10",
                 "--model-opt", "lstm:forget_bias=1,3", *TINY, "--out", str(out)]) == 0
    results = pd.read_csv(out / "results.csv")
    biases = sorted(json.loads(o)["forget_bias"] for o in results.loc[results["model"] == "lstm", "model_options"])
    assert biases == [1, 3] and (results["model"] == "rnn").sum() == 1
    assert json.loads((out / "run.json").read_text())["axes"] == ["model:forget_bias"]


# -- parameter matching ----------------------------------------------------------------------------------------

def test_params_matches_every_model_within_five_percent(tmp_path):
    out = tmp_path / "params"
    tiny = [a for a in TINY if a not in ("--hidden-size", "8")]
    assert main(["run", "--models", "rnn,lstm,gru,cifg", "--task", "recall", "--lengths", "10", "--steps", "20",
                 "--params", "20000", *tiny, "--out", str(out)]) == 0
    results = pd.read_csv(out / "results.csv").set_index("model")
    assert (abs(results["params"] - 20000) <= 0.05 * 20000).all(), results["params"]
    assert (results["params_target"] == 20000).all()
    assert results.loc["rnn", "hidden_size"] > results.loc["gru", "hidden_size"] > results.loc["lstm", "hidden_size"]


def test_params_is_the_closest_count_for_a_third_party_model():
    from harness.registry.entries import Entry
    from harness.registry.loader import get_state
    from harness.runs.sizing import matched_hidden_size, parameter_count

    def build(input_size, hidden_size):  # a third-party model: only its factory is known
        import torch

        class Square(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.zeros(hidden_size, hidden_size + input_size))
                self.output_size = hidden_size

        return Square()

    model = Entry("model", "square", build, "", "tests")
    task = get_state().tasks.get("recall")
    for target in (1000, 20000, 123457):
        hidden = matched_hidden_size(model, {}, task, {}, 10, target)
        count = lambda h: parameter_count(model, {}, 17, 8, "last", h)  # noqa: E731
        assert count(hidden) == hidden * (hidden + 17) + (hidden * 8 + 8)  # core and head
        assert abs(count(hidden) - target) <= min(abs(count(hidden - 1) - target), abs(count(hidden + 1) - target))


def test_params_and_hidden_size_together_are_refused(tmp_path, capsys):
    assert main(["run", "--models", "lstm", "--task", "recall", "--params", "1000", "--hidden-size", "8",
                 "--out", str(tmp_path / "x")]) == 2
    assert "cannot both be given" in capsys.readouterr().err


def test_task_declared_learning_rate_is_the_default():
    from harness.registry.loader import get_state

    assert get_state().tasks.get("adding").build(length=5).default_lr == 1e-2
    assert math.isclose(get_state().tasks.get("recall").build(length=5).default_lr, 1e-3)


def test_the_optimizer_setting_builds_rmsprop_as_the_chrono_paper_and_keeps_old_identities():
    import torch

    from harness.runs.spec import config_id
    from harness.runs.training import make_optimizer

    weights = [torch.nn.Parameter(torch.zeros(2))]
    rmsprop = make_optimizer("rmsprop", weights, 1e-3)
    assert isinstance(rmsprop, torch.optim.RMSprop) and rmsprop.defaults["alpha"] == 0.9
    assert isinstance(make_optimizer("adam", weights, 1e-3), torch.optim.Adam)
    with pytest.raises(HarnessError, match="unknown optimizer 'sgd'; choose adam or rmsprop"):
        S.optimizer("sgd", "optimizer")
    # a setting added after results were committed leaves the identity of default trials as it was
    before = {"lr": 1e-3}
    assert config_id({**before, "optimizer": "adam"}, {}, {}) == config_id(before, {}, {})
    assert config_id({**before, "optimizer": "rmsprop"}, {}, {}) != config_id(before, {}, {})
