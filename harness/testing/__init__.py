"""Contract checks for plugin authors: one call validates a model, one call validates a task.

Use them in a plugin's own tests, one pytest item per check::

    from harness.testing import parametrize_with_checks

    @parametrize_with_checks(models=[build_my_model], tasks=[MyTask])
    def test_contract(subject, check):
        check(subject)

or with one call each::

    from harness.testing import check_model, check_task

    def test_my_model():
        check_model(build_my_model)           # a factory, or a registered name such as "mgu"

    def test_my_task():
        check_task(MyTask, length=10)         # a Task class / factory, or a registered name

Each check raises :class:`AssertionError` with a message that names the model or task, what
was expected and what it got; ``check_model`` and ``check_task`` return the names of the checks
that ran, and ``checks=`` selects some of them by name (:data:`MODEL_CHECKS`,
:data:`TASK_CHECKS`). The checks seed the global torch, numpy and ``random`` generators as the
harness does, and restore their states on return. The harness runs them over every registered
model and task (``tests/test_contracts.py``), built-ins included.

The package: ``model_checks`` and ``task_checks`` hold one function per check and the selection
of checks; the model checks that matter most for whole-sequence models have modules of their own
(``causality``; ``precision``, float32 against float64 at a long length, whose measurements
``python -m harness.testing.float32_report`` prints; ``states``, the ``keep_states`` protocol),
sharing ``_model_context``; ``parametrize`` holds the pytest helper (pytest is imported only
when it is used).
What is checked, and why, is listed in ``docs/plugins.md`` (section "Contract checks").
"""

from __future__ import annotations

from harness.testing.model_checks import MODEL_CHECKS, check_model
from harness.testing.parametrize import Subject, parametrize_with_checks
from harness.testing.task_checks import TASK_CHECKS, check_task

__all__ = ["MODEL_CHECKS", "TASK_CHECKS", "Subject", "check_model", "check_task", "parametrize_with_checks"]
