"""harness-mgu: an example third-party plugin for harness.

It adds the model ``mgu`` (minimal gated unit, Zhou et al. 2016; ``harness_mgu.mgu``) and the task
``temporal_order`` (Hochreiter & Schmidhuber 1997, exp. 6a; ``harness_mgu.temporal_order``). The
hooks live in ``harness_mgu.plugin``, which imports neither torch nor the modules above: they are
registered as lazy ``"module:attr"`` targets and imported only when a model or task is built.
"""

__version__ = "0.1.0"
