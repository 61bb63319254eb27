"""The public contract checks (``harness.testing``): every registered model and task passes them,
built-ins and installed plugins alike, one pytest item per check; each check rejects the bug it
exists for, in a full run and selected alone; and the pytest helper makes the items it promises.

The rejection tests start from a small model and task that pass, and break one thing at a time.
"""

from __future__ import annotations

import math
import os
import random
import re
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.cli import main
from harness.errors import HarnessError
from harness.registry.loader import get_state
from harness.task_api import Batch, Task
from harness.testing import MODEL_CHECKS, TASK_CHECKS, Subject, check_model, check_task, parametrize_with_checks
from harness.testing.parametrize import ContractCheck

# --------------------------------------------------------------------------------------------
# everything registered passes, one item per (model, check) and (task, check)
# --------------------------------------------------------------------------------------------

MODEL_NAMES = get_state().models.names()
TASK_NAMES = get_state().tasks.names()
CPU_MODEL_CHECKS = [name for name in MODEL_CHECKS if name != "device:cuda"]
CUDA = torch.cuda.is_available()


def test_the_builtins_are_among_the_checked():
    assert {"rnn", "lstm", "gru", "bilstm", "peephole", "cifg"} <= set(MODEL_NAMES)
    assert {"copy", "adding", "recall"} <= set(TASK_NAMES)


@parametrize_with_checks(models=MODEL_NAMES, tasks=TASK_NAMES)
def test_registered_model_or_task_passes(subject, check):
    check(subject)


def test_a_full_run_returns_every_check_in_order():
    assert check_model("gru") == CPU_MODEL_CHECKS + (["device:cuda"] if CUDA else [])
    assert check_task("recall", samples=2048) == list(TASK_CHECKS)


def test_check_task_at_length_one_and_with_options():
    check_task("recall", length=1)
    check_task("copy", length=1, samples=2048)


def test_checks_accept_a_factory_and_reject_a_non_factory():
    from harness.plugins.gated_cell_models import build_cifg
    from harness.tasks.recall import LongGapRecall

    check_model(build_cifg, options={"forget_bias": 0.0})
    check_task(LongGapRecall, length=3)
    with pytest.raises(TypeError, match="expected a registered model name"):
        check_model(42)


def test_checks_leave_the_global_random_state_alone():
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    before = torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    check_model("rnn")
    check_task("recall", samples=1024)
    check_model("rnn", checks=["gradients"])
    check_task("recall", checks=["seeding"])
    assert torch.equal(torch.random.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1]) and random.getstate() == before[2]


def test_unknown_name_is_the_registry_error():
    with pytest.raises(HarnessError, match="did you mean 'lstm'"):
        check_model("lstn")


# --------------------------------------------------------------------------------------------
# broken models are rejected, each with a message that says what is wrong
# --------------------------------------------------------------------------------------------

class GoodRNN(nn.Module):
    """A small correct model; the broken ones below change one thing each."""

    def __init__(self, input_size: int, hidden_size: int = 8) -> None:
        super().__init__()
        self.rnn = nn.GRU(input_size, hidden_size, batch_first=True)
        self.output_size = hidden_size

    def forward(self, x):
        features, _ = self.rnn(x)
        return features, features[:, -1]


class WrongFeatureSize(GoodRNN):
    """Concatenates features with themselves but still declares output_size = hidden_size."""

    def forward(self, x):
        features, _ = self.rnn(x)
        features = torch.cat([features, features], dim=-1)
        return features, features[:, -1]


class ReturnsOneTensor(GoodRNN):
    def forward(self, x):
        return self.rnn(x)[0]


class SummaryWithTimeAxis(GoodRNN):
    def forward(self, x):
        features, _ = self.rnn(x)
        return features, features


class TimeMajor(GoodRNN):
    """The classic batch_first mix-up: shapes are right, but sequences of a batch are mixed."""

    def __init__(self, input_size: int, hidden_size: int = 8) -> None:
        super().__init__(input_size, hidden_size)
        self.rnn = nn.GRU(input_size, hidden_size)  # batch_first=False


class SummaryAtTheWrongEnd(GoodRNN):
    def forward(self, x):
        features, _ = self.rnn(x)
        return features, features[:, 0]


class UnusedParameter(GoodRNN):
    def __init__(self, input_size: int, hidden_size: int = 8) -> None:
        super().__init__(input_size, hidden_size)
        self.forgotten = nn.Parameter(torch.zeros(hidden_size))


class NondeterministicInit(GoodRNN):
    """Initialises from a generator seeded by the OS, not by the harness's seed."""

    def __init__(self, input_size: int, hidden_size: int = 8) -> None:
        super().__init__(input_size, hidden_size)
        gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.rand(p.shape, generator=gen) - 0.5)


class SeedIgnored(GoodRNN):
    """Initialises from a fixed private seed: reproducible, but every seed gives the same model."""

    def __init__(self, input_size: int, hidden_size: int = 8) -> None:
        super().__init__(input_size, hidden_size)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.rand(p.shape, generator=gen) - 0.5)


class UnregisteredTensor(GoodRNN):
    """Keeps a weight as a plain tensor attribute: never trained, never saved."""

    def __init__(self, input_size: int, hidden_size: int = 8) -> None:
        super().__init__(input_size, hidden_size)
        self.scale = torch.rand(hidden_size) + 0.5

    def forward(self, x):
        features, _ = self.rnn(x)
        features = features * self.scale
        return features, features[:, -1]


class FixedDevice(GoodRNN):
    """Adds a tensor created on the CPU, whatever device the model was moved to."""

    def forward(self, x):
        features, _ = self.rnn(x)
        features = features + torch.zeros(x.shape[0], x.shape[1], self.output_size)
        return features, features[:, -1]


class FixedDtype(GoodRNN):
    """Creates its initial state in float32 on the right device: breaks ``.double()``."""

    def forward(self, x):
        h0 = torch.zeros(1, x.shape[0], self.output_size, device=x.device)
        features, _ = self.rnn(x, h0)
        return features, features[:, -1]


class Float64Parameters(GoodRNN):
    def __init__(self, input_size: int, hidden_size: int = 8) -> None:
        super().__init__(input_size, hidden_size)
        self.rnn = self.rnn.double()

    def forward(self, x):
        features, _ = self.rnn(x.double())
        features = features.float()
        return features, features[:, -1]


class RandomInEval(GoodRNN):
    def forward(self, x):
        features, _ = self.rnn(x)
        features = F.dropout(features, 0.5, training=True)
        return features, features[:, -1]


class BatchMeanLeak(GoodRNN):
    """Mixes the batch's mean into every sequence: shapes, gradients and seeding are all right."""

    def forward(self, x):
        features, _ = self.rnn(x)
        features = features + 0.1 * features.mean(0, keepdim=True)
        return features, features[:, -1]


def _ignores_hidden_size(input_size, hidden_size=8):
    return GoodRNN(input_size, 8)


def _no_output_size(input_size, hidden_size=8):
    model = GoodRNN(input_size, hidden_size)
    model.output_size = float(hidden_size)
    return model


def _raises_on_build(input_size, hidden_size=8):
    raise ValueError("bad option")


def test_good_model_passes():
    assert "device:meta" in check_model(GoodRNN)


BROKEN_MODELS = [  # (factory, the check that catches it, what its message says)
    (WrongFeatureSize, "shapes", (r"must return features of shape \(batch, length, output_size\) = \(4, 7, 8\) .*"
                                  r"got features \(4, 7, 16\)")),
    (ReturnsOneTensor, "shapes", r"must return a pair \(features, summary\) of tensors, got Tensor \(4, 7, 8\)"),
    (SummaryWithTimeAxis, "shapes", (r"summary of shape \(batch, output_size\) = \(4, 8\); got features "
                                     r"\(4, 7, 8\) and summary \(4, 7, 8\)")),
    (TimeMajor, "batch independence", r"sequences of a batch are mixed .*batch_first=True"),
    (SummaryAtTheWrongEnd, "gradients", r"summary does not depend on the last time step"),
    (UnusedParameter, "gradients", r"no gradient reaches parameter 'core.forgotten'"),
    (NondeterministicInit, "determinism", r"two builds under the same seed differ"),
    (SeedIgnored, "determinism", r"identical parameters: the initialisation ignores the seed"),
    (UnregisteredTensor, "determinism", r"neither a parameter nor a buffer"),
    (FixedDevice, "device:meta", r"mixes devices .*inputs.new_zeros"),
    (FixedDtype, "dtype:float64", r"\.double\(\)"),
    (Float64Parameters, "build", (r"parameters must be float32 \(the model contract, see docs/plugins.md\), "
                                  r"found torch.float64")),
    (RandomInEval, "batch independence", r"two forward passes on the same inputs in eval mode differ"),
    (_ignores_hidden_size, "hidden_size", r"the factory ignores hidden_size"),
    (_no_output_size, "build", r"positive integer attribute output_size"),
    (_raises_on_build, "build", r"building it with input_size=3, hidden_size=8 raised ValueError: bad option"),
]


@pytest.mark.parametrize("factory, check, fragment", BROKEN_MODELS)
def test_broken_model_is_rejected_with_a_clear_message(factory, check, fragment):
    with pytest.raises(AssertionError, match=fragment) as info:
        check_model(factory)
    assert str(info.value).startswith(f"model {factory.__qualname__}: ")


@pytest.mark.parametrize("factory, check, fragment", BROKEN_MODELS)
def test_broken_model_is_rejected_by_its_check_alone(factory, check, fragment):
    with pytest.raises(AssertionError, match=fragment) as info:
        check_model(factory, checks=[check])
    assert str(info.value).startswith(f"model {factory.__qualname__}: ")


def test_a_check_selected_alone_ignores_the_faults_of_the_others():
    with pytest.raises(AssertionError, match="sequences of a batch are mixed"):
        check_model(BatchMeanLeak)
    assert check_model(BatchMeanLeak, checks=["gradients"]) == ["gradients"]
    others = [name for name in CPU_MODEL_CHECKS if name != "batch independence"]
    assert check_model(BatchMeanLeak, checks=others) == others
    # the float32 rule is the build check's own: the other checks run float64 parameters
    assert check_model(Float64Parameters, checks=["shapes", "gradients"]) == ["shapes", "gradients"]


def test_a_check_selected_alone_still_needs_a_model_that_builds():
    """What a check cannot do without (a module with an integer output_size) fails as "build" would."""
    with pytest.raises(AssertionError, match="positive integer attribute output_size"):
        check_model(_no_output_size, checks=["gradients"])
    with pytest.raises(AssertionError, match="raised ValueError: bad option"):
        check_model(_raises_on_build, checks=["dtype:float64"])


def test_selected_checks_run_once_in_the_canonical_order():
    assert check_model(GoodRNN, checks=["device:meta", "shapes", "build", "shapes"]) == [
        "build", "shapes", "device:meta"]
    assert check_model(GoodRNN, checks="hidden_size") == ["hidden_size"]
    assert check_model(GoodRNN, checks=[]) == []
    assert check_task(GoodTask, checks=["seeding", "attributes"]) == ["attributes", "seeding"]


def test_device_checks_run_only_where_the_device_is():
    assert check_model(GoodRNN, checks=["device:cpu"]) == []  # the reference is computed on the CPU
    assert check_model(GoodRNN, device="cpu") == CPU_MODEL_CHECKS
    if not CUDA:
        assert check_model(GoodRNN, checks=["device:cuda", "device:cuda:1", "build"]) == ["build"]


@pytest.mark.parametrize("call, kind", [(check_model, "model"), (check_task, "task")])
@pytest.mark.parametrize("bad", ["gradient", "device", "device:banana", "Shapes", 3])
def test_an_unknown_check_name_is_a_value_error_listing_the_known_ones(call, kind, bad):
    known = ", ".join(MODEL_CHECKS[:-1]) if kind == "model" else ", ".join(TASK_CHECKS)
    with pytest.raises(ValueError, match=rf"unknown {kind} check {bad!r}; the {kind} checks are: {known}"):
        call(GoodRNN if kind == "model" else GoodTask, checks=["build" if kind == "model" else "batch", bad])


def test_a_check_of_the_other_kind_is_unknown():
    with pytest.raises(ValueError, match="unknown task check 'shapes'"):
        check_task(GoodTask, checks=["shapes"])
    with pytest.raises(ValueError, match="unknown model check 'seeding'"):
        check_model(GoodRNN, checks=["seeding"])

WRONG_SHAPE_PLUGIN = '''
import torch
from torch import nn
from harness import hookimpl


class WrongShape(nn.Module):
    """Declares output_size = hidden_size but returns features twice as wide."""
    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.rnn = nn.GRU(input_size, hidden_size, batch_first=True)
        self.output_size = hidden_size
    def forward(self, x):
        y, _ = self.rnn(x)
        y = torch.cat([y, y], dim=-1)
        return y, y[:, -1]


@hookimpl
def register_models(register):
    register("wrong_shape", WrongShape, description="Returns features of the wrong width.")
'''

TINY = ["--lengths", "3", "--seeds", "1", "--steps", "4", "--eval-every", "2", "--eval-size", "16",
        "--hidden-size", "8", "--batch-size", "8", "--workers", "1", "--threads", "1", "--no-plot", "--quiet"]


@pytest.fixture
def wrong_shape_plugin(tmp_path):
    path = tmp_path / "wrong_shape_plugin.py"
    path.write_text(textwrap.dedent(WRONG_SHAPE_PLUGIN))
    return str(path)


def test_wrong_shape_model_is_an_error_trial_and_the_sweep_goes_on(tmp_path, wrong_shape_plugin, capsys):
    out = tmp_path / "run"
    code = main(["run", "--plugin", wrong_shape_plugin, "--models", "wrong_shape,lstm", "--task", "recall",
                 *TINY, "--out", str(out)])
    assert code == 1
    results = pd.read_csv(out / "results.csv").set_index("model")
    assert results.loc["lstm", "status"] == "ok"
    assert results.loc["wrong_shape", "status"] == "error"
    assert "shape" in results.loc["wrong_shape", "error"]
    assert "1 trial(s) failed: wrong_shape recall T=3 seed=0" in capsys.readouterr().err


def test_wrong_shape_model_error_names_the_contract(tmp_path, wrong_shape_plugin):
    out = tmp_path / "run"
    main(["run", "--plugin", wrong_shape_plugin, "--models", "wrong_shape", "--task", "recall", *TINY,
          "--out", str(out)])
    error = pd.read_csv(out / "results.csv").loc[0, "error"]
    assert "model contract" in error and "output_size" in error and "(8, 5, 16)" in error


def test_check_model_rejects_the_wrong_shape_plugin_model(wrong_shape_plugin, monkeypatch):
    monkeypatch.setenv("HARNESS_EXTRA_PLUGINS", wrong_shape_plugin)
    with pytest.raises(AssertionError, match=r"^model 'wrong_shape': forward\(x\) with x of shape \(4, 7, 3\).* "
                                             r"got features \(4, 7, 16\) and summary \(4, 16\)"):
        check_model("wrong_shape")


MISSPELLED_WITHOUT_PREFIX = '''
from harness import hookimpl

@hookimpl
def regster_models(register):
    register("never", "x:y")
'''


def test_misspelled_hook_without_the_register_prefix_is_contained(tmp_path, monkeypatch):
    """tests/test_plugins.py covers 'register_model'; a typo in the prefix must be contained too."""
    path = tmp_path / "typo_plugin.py"
    path.write_text(MISSPELLED_WITHOUT_PREFIX)
    monkeypatch.setenv("HARNESS_PLUGINS", "none")
    monkeypatch.setenv("HARNESS_EXTRA_PLUGINS", str(path))
    state = get_state()
    assert "lstm" in state.models and "never" not in state.models
    (warning,) = state.warnings
    assert "unknown hook 'regster_models' (did you mean 'register_models'?)" in warning


# --------------------------------------------------------------------------------------------
# broken tasks are rejected
# --------------------------------------------------------------------------------------------

class GoodTask(Task):
    """Recall with 4 keys and 2 distractor symbols: small and correct."""

    name = "good"
    input_size = 7
    output_size = 4
    readout = "last"
    default_lengths = (3, 6)

    @property
    def sequence_length(self):
        return self.length + 2

    def symbols(self, batch_size, generator):
        device = generator.device
        keys = torch.randint(0, 4, (batch_size,), generator=generator, device=device)
        noise = torch.randint(4, 6, (batch_size, self.length), generator=generator, device=device)
        return keys, noise

    def sample(self, batch_size, generator):
        keys, noise = self.symbols(batch_size, generator)
        query = torch.full((batch_size, 1), 6, dtype=torch.long, device=keys.device)
        symbols = torch.cat([keys[:, None], noise, query], dim=1)
        return Batch(F.one_hot(symbols, self.input_size).float(), keys)

    def loss(self, outputs, batch):
        return F.cross_entropy(outputs, batch.targets)

    def score(self, outputs, batch):
        return (outputs.argmax(-1) == batch.targets).float().mean()

    @property
    def chance_score(self):
        return 0.25

    @property
    def memoryless_loss(self):
        return math.log(4)

    def memoryless_outputs(self, batch):
        return torch.zeros(len(batch), 4, device=batch.inputs.device)


class GlobalTorchRNG(GoodTask):
    def symbols(self, batch_size, generator):
        keys, noise = super().symbols(batch_size, generator)
        return keys, torch.randint(4, 6, noise.shape)


class GlobalNumpyRNG(GoodTask):
    def symbols(self, batch_size, generator):
        keys, _ = super().symbols(batch_size, generator)
        return keys, torch.as_tensor(np.random.randint(4, 6, (batch_size, self.length)))


class GlobalPythonRNG(GoodTask):
    def symbols(self, batch_size, generator):
        keys, noise = super().symbols(batch_size, generator)
        noise[:, 0] = random.randint(4, 5)
        return keys, noise


class IgnoresGenerator(GoodTask):
    def symbols(self, batch_size, generator):
        return super().symbols(batch_size, torch.Generator().manual_seed(0))


class WrongMemorylessLoss(GoodTask):
    @property
    def memoryless_loss(self):
        return math.log(8)


class MemorylessLossTooHigh(GoodTask):
    """Consistent with its own memoryless outputs, but those are not the best a memoryless model can
    do: a confident guess of key 0 has loss ln(e^5 + 3) − 5/4, while uniform logits reach ln 4."""

    @property
    def memoryless_loss(self):
        return math.log(math.exp(5) + 3) - 5 / 4

    def memoryless_outputs(self, batch):
        outputs = torch.zeros(len(batch), 4, device=batch.inputs.device)
        outputs[:, 0] = 5.0
        return outputs


class ChanceTooLow(GoodTask):
    @property
    def chance_score(self):
        return 0.1


class WrongInputShape(GoodTask):
    @property
    def sequence_length(self):
        return self.length + 1


class FloatMask(GoodTask):
    readout = "sequence"

    def sample(self, batch_size, generator):
        batch = super().sample(batch_size, generator)
        targets = batch.targets[:, None].expand(-1, self.sequence_length).clone()
        mask = torch.zeros(batch_size, self.sequence_length)
        mask[:, -1] = 1.0
        return Batch(batch.inputs, targets, mask)


class TargetsOutOfRange(GoodTask):
    def sample(self, batch_size, generator):
        batch = super().sample(batch_size, generator)
        return Batch(batch.inputs, batch.targets + 1)


class AcceptsLengthZero(GoodTask):
    def __init__(self, length):
        self.length = length


class ScoreIsACount(GoodTask):
    def score(self, outputs, batch):
        return (outputs.argmax(-1) == batch.targets).float().sum()


class NonDifferentiableLoss(GoodTask):
    def loss(self, outputs, batch):
        return (outputs.argmax(-1) != batch.targets).float().mean()


class RegisteredUnderAnotherName(GoodTask):
    name = "other"


def test_good_task_passes():
    assert check_task(GoodTask)[-1] == "memoryless and chance"


BROKEN_TASKS = [  # (factory, the check that catches it, what its message says)
    (GlobalTorchRNG, "seeding", r"used the global torch random generator"),
    (GlobalNumpyRNG, "seeding", r"used the global numpy random generator"),
    (GlobalPythonRNG, "seeding", r"used the global Python random generator"),
    (IgnoresGenerator, "seeding", r"different seeds give identical batches"),
    (WrongMemorylessLoss, "memoryless and chance", (r"the loss of memoryless_outputs on 16384 sequences is "
                                                    r"1.38629 .* but memoryless_loss says 2.07944")),
    (MemorylessLossTooHigh, "memoryless and chance", r"random input-free outputs reach loss .* below memoryless_loss"),
    (ChanceTooLow, "memoryless and chance", r"random outputs score 0\.2\d+ .*above chance_score 0\.1000"),
    (WrongInputShape, "batch", (r"inputs of shape \(16, 7, 7\); expected \(batch, sequence_length, input_size\) = "
                                r"\(16, 6, 7\)")),
    (FloatMask, "batch", r"mask must be None or a bool tensor of shape \(16, 7\), got torch.float32"),
    (TargetsOutOfRange, "batch", (r"class targets at scored positions must lie in \[0, output_size\) = \[0, 4\), "
                                  r"found 1..4")),
    (AcceptsLengthZero, "attributes", r"length=0 was accepted; it must raise harness.errors.HarnessError"),
    (ScoreIsACount, "loss and score", r"score must lie in \[0, 1\]"),
    (NonDifferentiableLoss, "loss and score", r"the loss does not depend differentiably on the outputs"),
]


@pytest.mark.parametrize("factory, check, fragment", BROKEN_TASKS)
def test_broken_task_is_rejected_with_a_clear_message(factory, check, fragment):
    with pytest.raises(AssertionError, match=fragment) as info:
        check_task(factory)
    assert str(info.value).startswith(f"task {factory.__qualname__} (T=5): ")


@pytest.mark.parametrize("factory, check, fragment", BROKEN_TASKS)
def test_broken_task_is_rejected_by_its_check_alone(factory, check, fragment):
    with pytest.raises(AssertionError, match=fragment) as info:
        check_task(factory, checks=[check])
    assert str(info.value).startswith(f"task {factory.__qualname__} (T=5): ")


def test_a_task_check_selected_alone_ignores_the_faults_of_the_others():
    others = [name for name in TASK_CHECKS if name != "seeding"]
    assert check_task(GlobalTorchRNG, checks=others, samples=2048) == others
    # ... but every batch a check samples must be well formed
    with pytest.raises(AssertionError, match=r"inputs of shape \(16, 7, 7\)"):
        check_task(WrongInputShape, checks=["loss and score"])


def test_task_name_must_match_its_registration(monkeypatch, tmp_path):
    path = tmp_path / "misnamed_plugin.py"
    path.write_text(textwrap.dedent('''
        from harness import hookimpl
        from tests.test_contracts import RegisteredUnderAnotherName

        @hookimpl
        def register_tasks(register):
            register("misnamed", RegisteredUnderAnotherName, description="Name differs.")
    '''))
    monkeypatch.setenv("HARNESS_EXTRA_PLUGINS", str(path))
    with pytest.raises(AssertionError, match="task.name is 'other' but the task is registered as 'misnamed'"):
        check_task("misnamed")


# --------------------------------------------------------------------------------------------
# the checks catch bugs seen in public implementations
# --------------------------------------------------------------------------------------------

def test_adding_baseline_quoted_as_0_1767_is_rejected():
    from harness.tasks.adding import AddingProblem

    class QuotedBaseline(AddingProblem):
        @property
        def memoryless_loss(self):
            return 0.1767

    with pytest.raises(AssertionError, match=r"is 0\.16\d+ ± .* but memoryless_loss says 0\.1767"):
        check_task(QuotedBaseline, length=10)


def test_copy_accuracy_averaged_over_blanks_is_rejected():
    from harness.tasks.copy_memory import CopyMemory

    class BlanksScored(CopyMemory):
        def score(self, outputs, batch):
            return (outputs.argmax(-1) == batch.targets).float().mean()

    with pytest.raises(AssertionError, match=r"always predicting class 0 score 0\.6\d+ .* above chance_score 0\.1250"):
        check_task(BlanksScored, length=5)


# --------------------------------------------------------------------------------------------
# parametrize_with_checks: one pytest item per (subject, check)
# --------------------------------------------------------------------------------------------

def _items(mark):
    """(id, subject, check) for each parameter set of a parametrize mark."""
    argnames, params = mark.mark.args
    assert tuple(argnames) == ("subject", "check")
    return [(p.id, *p.values) for p in params]


def test_the_registered_items_are_every_subject_times_every_check():
    items = _items(parametrize_with_checks(models=MODEL_NAMES, tasks=TASK_NAMES))
    expected = [f"{m}-{c}" for m in MODEL_NAMES for c in MODEL_CHECKS] + \
               [f"{t}-{c}" for t in TASK_NAMES for c in TASK_CHECKS]
    assert [i for i, _, _ in items] == expected
    assert "mgu-gradients" in expected and "temporal_order-seeding" in expected  # the example plugin
    for item_id, subject, check in items:
        assert isinstance(check, ContractCheck) and item_id == f"{subject}-{check.name}"
        assert check.kind == ("model" if subject in MODEL_NAMES else "task")


def test_items_for_entries_factories_and_subjects_with_options():
    from harness.plugins.gated_cell_models import build_cifg

    cifg = Subject(build_cifg, id="cifg-open", hidden_size=5, options={"forget_bias": 0.0}, device="cpu")
    mark = parametrize_with_checks(models=[get_state().models.get("lstm"), GoodRNN, cifg],
                                   tasks=[GoodTask, Subject("recall", length=3, samples=1024)])
    ids = [i for i, _, _ in _items(mark)]
    n = len(MODEL_CHECKS)
    assert ids[:n] == [f"lstm-{c}" for c in MODEL_CHECKS]
    assert ids[n:2 * n] == [f"GoodRNN-{c}" for c in MODEL_CHECKS]
    assert ids[2 * n:3 * n] == [f"cifg-open-{c}" for c in CPU_MODEL_CHECKS] + ["cifg-open-device:cpu"]
    assert ids[3 * n:] == [f"GoodTask-{c}" for c in TASK_CHECKS] + [f"recall-{c}" for c in TASK_CHECKS]
    for item_id, subject, check in _items(mark):
        if item_id in ("cifg-open-hidden_size", "recall-memoryless and chance", "lstm-build"):
            check(subject)  # the subject's options and sizes are used


def test_the_checks_argument_selects_items_of_both_kinds():
    mark = parametrize_with_checks(models=["rnn", GoodRNN], tasks="recall",
                                   checks=["seeding", "shapes", "device:mps"])
    assert [i for i, _, _ in _items(mark)] == ["rnn-shapes", "rnn-device:mps", "GoodRNN-shapes",
                                               "GoodRNN-device:mps", "recall-seeding"]


def test_a_check_item_fails_with_the_checks_message_and_skips_where_it_does_not_apply():
    with pytest.raises(AssertionError, match="sequences of a batch are mixed"):
        ContractCheck("model", "batch independence")(BatchMeanLeak)
    ContractCheck("model", "gradients")(Subject(BatchMeanLeak, hidden_size=3))
    with pytest.raises(pytest.skip.Exception, match="'device:cpu' does not apply: the reference outputs"):
        ContractCheck("model", "device:cpu")(GoodRNN)
    if not CUDA:
        with pytest.raises(pytest.skip.Exception, match="device 'cuda' is not available"):
            ContractCheck("model", "device:cuda")("rnn")
    with pytest.raises(ValueError, match="unknown task check 'shapes'"):
        ContractCheck("task", "shapes")


def test_mistakes_in_parametrize_with_checks_are_reported_at_collection():
    with pytest.raises(ValueError, match=r"unknown check 'gradient'; the model checks are: build, .*; "
                                         r"the task checks are: attributes, "):
        parametrize_with_checks(models=["rnn"], checks=["gradient"])
    with pytest.raises(ValueError, match="two models have the test id 'GoodRNN'"):
        parametrize_with_checks(models=[GoodRNN, Subject(GoodRNN, hidden_size=3)])
    with pytest.raises(TypeError, match="not arguments of check_task"):
        parametrize_with_checks(tasks=[Subject(GoodTask, hidden_size=3)])
    with pytest.raises(TypeError, match="takes no checks="):
        Subject(GoodRNN, checks=["build"])
    with pytest.raises(ValueError, match="no \\(subject, check\\) pair selected"):
        parametrize_with_checks(models=["rnn"], checks=["seeding"])


PLUGIN_TESTS = '''
from torch import nn

from harness.testing import Subject, parametrize_with_checks


class Good(nn.Module):
    def __init__(self, input_size, hidden_size=8):
        super().__init__()
        self.rnn = nn.GRU(input_size, hidden_size, batch_first=True)
        self.output_size = hidden_size

    def forward(self, x):
        features, _ = self.rnn(x)
        return features, features[:, -1]


class Leaky(Good):
    def forward(self, x):
        features, summary = super().forward(x)
        features = features + features.mean(0, keepdim=True)
        return features, features[:, -1]


@parametrize_with_checks(models=[Good, Subject(Leaky, id="leaky", hidden_size=4)], tasks=["recall"],
                         checks=["build", "batch independence", "device:cuda", "batch"])
def test_contract(subject, check):
    check(subject)
'''


def test_a_plugin_authors_test_file_gets_one_item_per_check(tmp_path):
    """pytest in a subprocess, as a plugin author runs it: the item ids, and what passes, fails, skips."""
    (tmp_path / "test_plugin_contract.py").write_text(PLUGIN_TESTS)
    env = {**os.environ, "HARNESS_PLUGINS": "none"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider",
                             "test_plugin_contract.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            check=False)
    outcomes = dict(re.findall(r"::test_contract\[(.+?)\] (PASSED|FAILED|SKIPPED)", result.stdout))
    assert outcomes == {
        "Good-build": "PASSED", "Good-batch independence": "PASSED",
        "Good-device:cuda": "PASSED" if CUDA else "SKIPPED",
        "leaky-build": "PASSED", "leaky-batch independence": "FAILED",
        "leaky-device:cuda": "PASSED" if CUDA else "SKIPPED",
        "recall-batch": "PASSED"}, result.stdout
    assert "model Leaky: sequence 0 gives different features alone than in a batch of 4" in result.stdout
    if not CUDA:
        assert "model check 'device:cuda' does not apply: device 'cuda' is not available" in result.stdout


def test_importing_harness_testing_does_not_import_pytest():
    code = ("import sys, harness.testing; assert 'pytest' not in sys.modules, 'pytest imported'; "
            "harness.testing.check_model('rnn', checks=['build']); "
            "assert 'pytest' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "HARNESS_PLUGINS": "none"})
