"""Exceptions whose message is shown to the user as a single line (exit code 2)."""


class HarnessError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""


class PluginError(HarnessError):
    """A plugin failed to load or to register, or two plugins disagree (e.g. duplicate names)."""
