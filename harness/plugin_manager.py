"""Deprecated import path, kept so that plugin test suites written for harness 0.1 keep working.

Use :mod:`harness.registry` (``from harness.registry import load_plugins``).
"""

from harness.registry.loader import *  # noqa: F401,F403
from harness.registry.loader import get_model, get_state, get_task, load_plugins, reset_state  # noqa: F401
