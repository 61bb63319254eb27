"""The public contract checks (``harness.testing``): every registered model and task passes them,
built-ins and installed plugins alike, and each check rejects the bug it exists for.

The rejection tests start from a small model and task that pass, and break one thing at a time.
"""

from __future__ import annotations

import math
import os
import random
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
from harness.testing import check_model, check_task



# --------------------------------------------------------------------------------------------
# everything registered passes
# --------------------------------------------------------------------------------------------

MODEL_NAMES = get_state().models.names()
TASK_NAMES = get_state().tasks.names()


def test_the_builtins_are_among_the_checked():
    assert {"rnn", "lstm", "gru", "bilstm", "peephole", "cifg"} <= set(MODEL_NAMES)
    assert {"copy", "adding", "recall"} <= set(TASK_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_registered_model_passes_check_model(name):
    checks = check_model(name)
    assert checks[:6] == ["build", "shapes", "batch independence", "gradients", "determinism", "hidden_size"]
    assert "dtype:float64" in checks


@pytest.mark.parametrize("name", TASK_NAMES)
def test_registered_task_passes_check_task(name):
    checks = check_task(name)
    assert checks == ["attributes", "batch", "seeding", "loss and score", "perfect predictions",
                      "memoryless and chance"]


def test_check_task_at_length_one_and_with_options():
    check_task("recall", length=1)
    check_task("copy", length=1, samples=2048)


def test_checks_accept_a_factory_and_reject_a_non_factory():
    from harness.plugins.gated_cell_models import build_cifg
    from harness.tasks.recall import LongGapRecall

    check_model(build_cifg, options={"input_bias": 0.0})
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


@pytest.mark.parametrize("factory, fragment", [
    (WrongFeatureSize, r"must return features of shape \(batch, length, output_size\) = \(4, 7, 8\) .*"
                       r"got features \(4, 7, 16\)"),
    (ReturnsOneTensor, r"must return a pair \(features, summary\) of tensors, got Tensor \(4, 7, 8\)"),
    (SummaryWithTimeAxis, r"summary of shape \(batch, output_size\) = \(4, 8\); got features \(4, 7, 8\) "
                          r"and summary \(4, 7, 8\)"),
    (TimeMajor, r"sequences of a batch are mixed .*batch_first=True"),
    (SummaryAtTheWrongEnd, r"summary does not depend on the last time step"),
    (UnusedParameter, r"no gradient reaches parameter 'core.forgotten'"),
    (NondeterministicInit, r"two builds under the same seed differ"),
    (SeedIgnored, r"identical parameters: the initialisation ignores the seed"),
    (UnregisteredTensor, r"neither a parameter nor a buffer"),
    (FixedDevice, r"mixes devices .*inputs.new_zeros"),
    (FixedDtype, r"\.double\(\)"),
    (Float64Parameters, r"parameters must be float32"),
    (RandomInEval, r"two forward passes on the same inputs in eval mode differ"),
    (_ignores_hidden_size, r"the factory ignores hidden_size"),
    (_no_output_size, r"positive integer attribute output_size"),
    (_raises_on_build, r"building it with input_size=3, hidden_size=8 raised ValueError: bad option"),
])
def test_broken_model_is_rejected_with_a_clear_message(factory, fragment):
    with pytest.raises(AssertionError, match=fragment) as info:
        check_model(factory)
    assert str(info.value).startswith(f"model {factory.__qualname__}: ")


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


@pytest.mark.parametrize("factory, fragment", [
    (GlobalTorchRNG, r"used the global torch random generator"),
    (GlobalNumpyRNG, r"used the global numpy random generator"),
    (GlobalPythonRNG, r"used the global Python random generator"),
    (IgnoresGenerator, r"different seeds give identical batches"),
    (WrongMemorylessLoss, r"the loss of memoryless_outputs on 16384 sequences is 1.38629 .* but memoryless_loss "
                          r"says 2.07944"),
    (MemorylessLossTooHigh, r"random input-free outputs reach loss .* below memoryless_loss"),
    (ChanceTooLow, r"random outputs score 0\.2\d+ .*above chance_score 0\.1000"),
    (WrongInputShape, r"inputs of shape \(16, 7, 7\); expected \(batch, sequence_length, input_size\) = "
                      r"\(16, 6, 7\)"),
    (FloatMask, r"mask must be None or a bool tensor of shape \(16, 7\), got torch.float32"),
    (TargetsOutOfRange, r"class targets at scored positions must lie in \[0, output_size\) = \[0, 4\), found 1..4"),
    (AcceptsLengthZero, r"length=0 was accepted; it must raise harness.errors.HarnessError"),
    (ScoreIsACount, r"score must lie in \[0, 1\]"),
    (NonDifferentiableLoss, r"the loss does not depend differentiably on the outputs"),
])
def test_broken_task_is_rejected_with_a_clear_message(factory, fragment):
    with pytest.raises(AssertionError, match=fragment) as info:
        check_task(factory)
    assert str(info.value).startswith(f"task {factory.__qualname__} (T=5): ")


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
# the checks catch the bugs SPEC/STYLE list from public implementations
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
