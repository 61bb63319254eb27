"""harness: train recurrent sequence models on long-dependency tasks and measure how far back they remember.

This module stays free of torch so that `harness --help` and the listings start fast.
"""

import pluggy

__version__ = "0.2.0"

#: The plugin API this version provides (docs/plugins.md, "Plugin API version and compatibility").
PLUGIN_API_VERSION = "1.1"

#: Marker for hook implementations in plugins: decorate ``register_models`` / ``register_tasks``.
hookimpl = pluggy.HookimplMarker("harness")

__all__ = ["PLUGIN_API_VERSION", "__version__", "hookimpl"]
