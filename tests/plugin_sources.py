"""Source code of small test plugins, shared by the plugin and CLI tests."""

TOY_MODEL = '''
from harness import hookimpl

@hookimpl
def register_models(register):
    register("toy", "toy_model_impl:build", description="A toy GRU for tests.")
'''

TOY_MODEL_IMPL = '''
import torch
from torch import nn

class Toy(nn.Module):
    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.rnn = nn.GRU(input_size, hidden_size, batch_first=True)
        self.output_size = hidden_size
    def forward(self, x):
        y, _ = self.rnn(x)
        return y, y[:, -1]

def build(input_size, hidden_size=8):
    return Toy(input_size, hidden_size)
'''

FAILING_MODELS = '''
import torch
from torch import nn
from harness import hookimpl


class Exploding(nn.Module):
    """Raises during forward, as a buggy third-party model would."""
    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.linear = nn.Linear(input_size, hidden_size)
        self.output_size = hidden_size
    def forward(self, x):
        raise RuntimeError("boom from a buggy model")


class Diverging(nn.Module):
    """Produces NaN features, as a numerically unstable model would."""
    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.linear = nn.Linear(input_size, hidden_size)
        self.output_size = hidden_size
    def forward(self, x):
        y = self.linear(x) * float("nan")
        return y, y[:, -1]


@hookimpl
def register_models(register):
    register("exploding", Exploding, description="Always raises.")
    register("diverging", Diverging, description="Always NaN.")
'''

RAISES_AT_IMPORT = '''
raise ImportError("this plugin is broken on purpose")
'''

RAISES_IN_HOOK = '''
from harness import hookimpl

@hookimpl
def register_models(register):
    raise ValueError("hook failed on purpose")
'''

MISSPELLED_HOOK = '''
from harness import hookimpl

@hookimpl
def register_model(register):
    register("never", "x:y")
'''

DUPLICATE_NAME = '''
from harness import hookimpl

@hookimpl
def register_models(register):
    register("lstm", "somewhere:else", description="Clashes with the built-in lstm.")
    register("unique_dup_test_model", "toy_model_impl:build", description="Still registered.")
'''

# Models for the Ray tests: one kills its worker process, one outlives any timeout, and one only
# works when loaded from the copy of this file that Ray shipped (not from the driver's own file).
RAY_MODELS = '''
import os
import time

from torch import nn
from harness import hookimpl

DRIVER_FILE = "__DRIVER_FILE__"  # the test writes this file's path on the driver here
if os.path.realpath(__file__) != os.path.realpath(DRIVER_FILE):  # a worker's copy: a slow set-up when asked
    time.sleep(float(os.environ.get("HARNESS_TEST_WORKER_SETUP_SECONDS", "0")))


class Crashing(nn.Module):
    """Ends its process in the middle of a trial, as a segfault would."""
    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.linear = nn.Linear(input_size, hidden_size)
        self.output_size = hidden_size
    def forward(self, x):
        os._exit(1)


class Sleeping(Crashing):
    def forward(self, x):
        time.sleep(600)


class Shipped(nn.Module):
    """A GRU that refuses to run from the driver's file: proof that the plugin travelled."""
    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.rnn = nn.GRU(input_size, hidden_size, batch_first=True)
        self.output_size = hidden_size
    def forward(self, x):
        if os.path.realpath(__file__) == os.path.realpath(DRIVER_FILE):
            raise RuntimeError("loaded from the driver's file, not from the copy Ray shipped")
        y, _ = self.rnn(x)
        return y, y[:, -1]


@hookimpl
def register_models(register):
    register("crashing", Crashing, description="Calls os._exit(1) in forward.")
    register("sleeping", Sleeping, description="Sleeps in forward.")
    register("shipped", Shipped, description="A GRU, only from a shipped copy.")
'''
