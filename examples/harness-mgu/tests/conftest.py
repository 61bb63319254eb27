"""Run the tests against the installed package or, when it is not installed, against ``src/``."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("harness_mgu") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
