"""Plugin loading and the model and task registries.

``harness.registry.entries`` holds the registries (name → lazy factory, aliases, "did you mean");
``harness.registry.loader`` loads the built-in, installed and command-line plugins and fills them.
"""

from harness.registry.entries import Entry, Registry, Target
from harness.registry.loader import get_model, get_state, get_task, load_plugins, reset_state

__all__ = ["Entry", "Registry", "Target", "get_model", "get_state", "get_task", "load_plugins",
           "reset_state"]
