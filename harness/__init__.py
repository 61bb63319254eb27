"""harness: train recurrent sequence models on long-dependency tasks and measure how far back they remember.

This module stays free of torch so that `harness --help` and the listings start fast.
"""

import pluggy

__version__ = "0.1.0"

#: Marker for hook implementations in plugins: decorate ``register_models`` / ``register_tasks``.
hookimpl = pluggy.HookimplMarker("harness")

__all__ = ["__version__", "hookimpl"]
