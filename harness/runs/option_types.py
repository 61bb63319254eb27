"""Check model and task option values against what a builder accepts, before anything trains.

What a builder accepts comes from its parameter annotations (``forget_bias: float``,
``mode: Literal["scan", "loop"]`` for declared choices, ``int | None``, ``list[int]``), else from
the type of the default (``peepholes=True`` takes a bool). A value that does not fit is one line
naming the option, the value and what is accepted, so a typo never starts workers only to fill
the results with error rows. What cannot be read (no annotation and no default, a type this module
does not know, an annotation that does not resolve) accepts anything: the builder still decides.
"""

from __future__ import annotations

import inspect
import numbers
import types
import typing
from collections.abc import Callable
from typing import Any

from harness.errors import HarnessError

#: A check: None if the value fits, else what is accepted (e.g. "a number").
Check = Callable[[Any], str | None]


def _anything(_value: Any) -> str | None:
    return None


def _instance(kinds: tuple[type, ...], what: str, exclude: tuple[type, ...] = ()) -> Check:
    def check(value: Any) -> str | None:
        return None if isinstance(value, kinds) and not isinstance(value, exclude) else what
    return check


_SIMPLE: dict[Any, Check] = {
    bool: _instance((bool,), "true or false"),
    int: _instance((numbers.Integral,), "an integer", exclude=(bool,)),
    float: _instance((numbers.Real,), "a number", exclude=(bool,)),
    complex: _instance((numbers.Number,), "a number", exclude=(bool,)),
    str: _instance((str,), "a string"),
    bytes: _instance((bytes,), "bytes"),
    type(None): lambda value: None if value is None else "None",
    list: _instance((list,), "a list, e.g. [1,2]"),
    tuple: _instance((list, tuple), "a list, e.g. [1,2]"),
    dict: _instance((dict,), "a table"),
}


def check_for(annotation: Any) -> Check:
    """The check of a resolved annotation (anything it does not understand accepts every value)."""
    if annotation in (inspect.Parameter.empty, Any, object):
        return _anything
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        shown = ", ".join(repr(c) for c in choices)

        def literal(value: Any) -> str | None:
            fits = any(value == c and type(value) is type(c) for c in choices)
            return None if fits else f"one of {shown}"
        return literal
    if origin in (typing.Union, types.UnionType):
        branches = [check_for(arg) for arg in typing.get_args(annotation)]

        def union(value: Any) -> str | None:
            problems = [branch(value) for branch in branches]
            return None if None in problems else " or ".join(dict.fromkeys(p for p in problems if p))
        return union
    if origin is typing.Annotated:
        return check_for(typing.get_args(annotation)[0])
    return _SIMPLE.get(origin or annotation, _anything)


def _from_default(default: Any) -> Check:
    """What the type of a default implies: a bool takes a bool, a float any number, and so on."""
    if default is inspect.Parameter.empty or default is None:
        return _anything
    return _SIMPLE.get(type(default), _anything)


def builder_checks(factory: Any) -> dict[str, Check]:
    """One check per keyword parameter of ``factory`` (a function or a class), from its annotation
    or, without one, from its default."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return {}
    hints = _hints(factory)
    checks = {}
    for name, parameter in signature.parameters.items():
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        annotation = hints.get(name, parameter.annotation)
        if isinstance(annotation, str):  # an annotation that did not resolve
            annotation = inspect.Parameter.empty
        check = check_for(annotation)
        checks[name] = _from_default(parameter.default) if check is _anything else check
    return checks


def _hints(factory: Any) -> dict[str, Any]:
    """Resolved annotations (``from __future__ import annotations`` keeps them as text)."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:  # noqa: BLE001 (a name only imported for type checking: fall back to the defaults)
        return {}


def check_values(kind: str, name: str, factory: Any, axes: dict[str, list[Any]], flag: str) -> None:
    """Raise a one-line :class:`HarnessError` for the first value of ``axes`` its builder does not accept."""
    checks = builder_checks(factory)
    for key, values in axes.items():
        check = checks.get(key)
        if check is None:
            continue
        for value in values:
            accepted = check(value)
            if accepted is not None:
                raise HarnessError(f"{flag} {name}:{key}: {_show(value)} is not accepted by {kind} '{name}'; "
                                   f"expected {accepted}")


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)
