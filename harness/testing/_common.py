"""What the model and task checks share: failing with a message, resolving what to check, keeping
the caller's random state, and running a selection of named checks."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from harness.registry.entries import Entry

ATOL = 1e-5  # float32 agreement between two evaluations of the same computation
CHUNKS = 32  # the statistical checks estimate their standard error from this many chunks


class CheckNotRun(Exception):
    """Raised by a check that does not apply here (no CUDA, no meta kernel); the reason is the message."""


@dataclass
class CheckReport:
    """The checks that ran, in order, and why the others that were selected did not."""

    ran: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def fail(prefix: str, message: str) -> None:
    """Raise the contract checks' error: ``"<model or task>: <what was expected, what was found>"``."""
    raise AssertionError(f"{prefix}: {message}")


def shape_of(t: Any) -> str:
    """A tensor's shape as a tuple, or the type name of anything else, for messages."""
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def resolve(target: Any, kind: str) -> tuple[Callable[..., Any], str, str | None]:
    """(factory, label for messages, registered name or None) for a name, an Entry or a callable."""
    if isinstance(target, str):
        from harness.registry.loader import get_state

        state = get_state()
        entry = (state.models if kind == "model" else state.tasks).get(target)
        return entry.build, f"{kind} '{entry.name}'", entry.name
    if isinstance(target, Entry):
        return target.build, f"{kind} '{target.name}'", target.name
    if callable(target):
        return target, f"{kind} {getattr(target, '__qualname__', repr(target))}", None
    raise TypeError(f"expected a registered {kind} name, a registry Entry or a factory, got {target!r}")


def restoring_global_rng(func: Callable[..., Any]) -> Callable[..., Any]:
    """The checks seed the global generators as the harness does; afterwards, restore the caller's."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        saved = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
        try:
            return func(*args, **kwargs)
        finally:
            torch.random.set_rng_state(saved[0])
            np.random.set_state(saved[1])
            random.setstate(saved[2])
    return wrapper


def single_threaded(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run with one intra-op thread, then restore the caller's count: the checks' tensors are tiny,
    and several threads only contend (a 1000-step check ran 10x slower on two busy cores)."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return func(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)
    return wrapper


def seed_everything(seed: int) -> None:
    """Seed the global generators the way the harness does before it builds a model."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def as_names(checks: str | Iterable[str]) -> list[str]:
    """The names in a ``checks=`` argument: one name as a string, or an iterable of names."""
    if isinstance(checks, str):
        return [checks]
    try:
        return list(checks)
    except TypeError:
        raise TypeError(f"checks must be None or an iterable of check names, got {checks!r}") from None


def unknown_check(kind: str, name: Any, known: Sequence[str]) -> ValueError:
    """The error for a ``checks=`` entry that names no check, listing the ones there are."""
    return ValueError(f"unknown {kind} check {name!r}; the {kind} checks are: {', '.join(known)}")


def run_checks(context: Any, names: Sequence[str], lookup: Callable[[str], Callable[[Any], None]]) -> CheckReport:
    """Run the named checks on one shared context, in the given order.

    A check fails by raising :class:`AssertionError`, which stops the run; one that does not apply
    raises :class:`CheckNotRun` and is recorded with its reason.
    """
    report = CheckReport()
    for name in names:
        try:
            lookup(name)(context)
        except CheckNotRun as reason:
            report.skipped[name] = str(reason)
        else:
            report.ran.append(name)
    return report
