"""Built-in task plugins, installed as ``harness.tasks`` (the repository keeps them in ``tasks/``)."""
