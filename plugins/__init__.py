"""Built-in model plugins, installed as ``harness.plugins`` (the repository keeps them in ``plugins/``)."""
