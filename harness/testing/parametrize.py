"""One pytest item per (model or task, check), after scikit-learn's ``parametrize_with_checks``.

pytest is imported only when :func:`parametrize_with_checks` is called or a check is skipped, so
plugins can import :mod:`harness.testing` at run time without pytest installed.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from harness.registry.entries import Entry
from harness.testing._common import as_names
from harness.testing.model_checks import (
    DEFAULT_DEVICE,
    DESCRIBED_MODEL_CHECKS,
    MODEL_CHECKS,
    check_model,
    run_model_checks,
    select_model_checks,
)
from harness.testing.task_checks import TASK_CHECKS, check_task, run_task_checks, select_task_checks

if TYPE_CHECKING:
    import pytest

_KINDS = {"model": (check_model, run_model_checks), "task": (check_task, run_task_checks)}


class Subject:
    """A model or task to check, with keyword arguments for :func:`check_model` or :func:`check_task`.

    ``Subject(build_mgu, hidden_size=1, options={"gate_bias": 2.0}, id="mgu-h1")`` checks
    ``build_mgu`` at hidden size 1 with that option, under test ids ``mgu-h1-<check>``. ``target``
    is what :func:`check_model` / :func:`check_task` take (a registered name, a registry entry or
    a factory); ``id`` defaults to its name.
    """

    __slots__ = ("id", "kwargs", "target")

    def __init__(self, target: Any, *, id: str | None = None, **kwargs: Any) -> None:
        if "checks" in kwargs:
            raise TypeError("Subject() takes no checks=: select checks with parametrize_with_checks(checks=...)")
        self.target = target
        self.id = id if id is not None else _name_of(target)
        self.kwargs = kwargs

    def __repr__(self) -> str:
        arguments = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"Subject({self.target!r}, id={self.id!r}{arguments})"


class ContractCheck:
    """One named check of one kind (model or task). ``check(subject)`` runs that check alone on a
    subject (a :class:`Subject`, or anything ``check_model`` / ``check_task`` take) and calls
    ``pytest.skip`` when it does not apply there (no CUDA; no meta kernel)."""

    __slots__ = ("kind", "name")

    def __init__(self, kind: str, name: str) -> None:
        if kind not in _KINDS:
            raise ValueError(f"kind must be 'model' or 'task', got {kind!r}")
        (select_model_checks if kind == "model" else select_task_checks)([name])  # validates the name
        self.kind, self.name = kind, name

    def __call__(self, subject: Any) -> None:
        target, kwargs = _unpack(subject)
        report = _KINDS[self.kind][1](target, checks=[self.name], **kwargs)
        if self.name not in report.ran:
            import pytest

            pytest.skip(f"{self.kind} check {self.name!r} does not apply: {report.skipped.get(self.name)}")

    def __repr__(self) -> str:
        return f"<{self.kind} check {self.name!r}>"


def parametrize_with_checks(models: Iterable[Any] = (), tasks: Iterable[Any] = (), *,
                            checks: str | Iterable[str] | None = None) -> pytest.MarkDecorator:
    """A ``pytest.mark.parametrize`` over ``(subject, check)``: one item per model and model check,
    then one per task and task check, with ids ``<subject id>-<check name>``.

    ``models`` and ``tasks`` hold registered names, registry entries, factories or
    :class:`Subject` objects (for options, sizes or an id). ``checks`` keeps only the named
    checks (model and task names may be mixed). A model's device item is ``device:cuda``, or
    ``device:<dev>`` for a subject given ``device=``; it is skipped where the device is missing.
    The decorated test receives each subject as listed and calls ``check(subject)``.
    """
    import pytest

    selected = _split_selection(checks)
    params = []
    for kind, subjects in (("model", models), ("task", tasks)):
        seen: dict[str, Any] = {}
        for subject in _as_list(subjects):
            sid = _check_subject(subject, kind, seen)
            for name in _names_for(subject, kind, selected):
                params.append(pytest.param(subject, ContractCheck(kind, name), id=f"{sid}-{name}"))
    if not params:
        raise ValueError("parametrize_with_checks: no (subject, check) pair selected: "
                         "give models=, tasks= or both, and checks that apply to them")
    return pytest.mark.parametrize(("subject", "check"), params)


def _split_selection(checks: str | Iterable[str] | None) -> dict[str, list[str]] | None:
    """The ``checks=`` names as {"model": [...], "task": [...]}; None for all. Unknown names raise."""
    if checks is None:
        return None
    names = as_names(checks)
    for name in names:
        if name in TASK_CHECKS:
            continue
        try:
            select_model_checks([name])
        except ValueError:
            raise ValueError(f"unknown check {name!r}; the model checks are: {', '.join(DESCRIBED_MODEL_CHECKS)}; "
                             f"the task checks are: {', '.join(TASK_CHECKS)}") from None
    return {"model": select_model_checks([n for n in names if n not in TASK_CHECKS]),
            "task": select_task_checks([n for n in names if n in TASK_CHECKS])}


def _names_for(subject: Any, kind: str, selected: dict[str, list[str]] | None) -> list[str]:
    """The checks to make items of for one subject."""
    if selected is not None:
        return selected[kind]
    if kind == "task":
        return list(TASK_CHECKS)
    device = subject.kwargs.get("device") if isinstance(subject, Subject) else None
    return [*MODEL_CHECKS[:-1], f"device:{device or DEFAULT_DEVICE}"]


def _check_subject(subject: Any, kind: str, seen: dict[str, Any]) -> str:
    """The subject's id, after checking its keyword arguments and that no other subject has it."""
    target, kwargs = _unpack(subject)
    function = _KINDS[kind][0]
    try:
        inspect.signature(function).bind(target, **kwargs)  # type: ignore[arg-type]
    except TypeError as exc:
        raise TypeError(f"{subject!r}: these are not arguments of {function.__name__}(): {exc}") from None
    sid = subject.id if isinstance(subject, Subject) else _name_of(subject)
    if sid in seen:
        raise ValueError(f"two {kind}s have the test id {sid!r} ({seen[sid]!r} and {subject!r}): "
                         f"give them distinct ids with Subject(..., id=...)")
    seen[sid] = subject
    return sid


def _unpack(subject: Any) -> tuple[Any, dict[str, Any]]:
    if isinstance(subject, Subject):
        return subject.target, dict(subject.kwargs)
    return subject, {}


def _as_list(subjects: Any) -> list[Any]:
    """A list of subjects; one subject alone (a name, an entry, a factory) counts as a list of one."""
    if isinstance(subjects, (str, Entry, Subject)) or callable(subjects):
        return [subjects]
    return list(subjects)


def _name_of(target: Any) -> str:
    """A short test id for a name, a registry entry or a factory."""
    if isinstance(target, str):
        return target
    if isinstance(target, Entry):
        return target.name
    if isinstance(target, functools.partial):
        return _name_of(target.func)
    return str(getattr(target, "__name__", None) or type(target).__name__)
