"""Type checks of plain data (JSON config files, TrainConfig) against Python annotations.

    check_value(0.1, float, "train.lr")                       # fine
    check_value("0.1", float, "train.lr")                     # ValueError: train.lr: expected a number, got "0.1"
    check_kwargs(NoiseSchedule.linear, {"T": 1.5}, "schedule")   # schedule.T: expected an integer, got 1.5

JSON has its own types and we keep them: a boolean is true/false (never "false"), a number is not a string,
an integer is not 1.5, a list is not a bare number. Errors name the field's path and what it accepts.
"""

from __future__ import annotations

import inspect
import json
import typing
from typing import Any, Callable, Iterable, Optional

import numpy as np

MAX_DEPTH = 32         # a config nested deeper than this is refused (real ones are 3 or 4 levels deep)


def shown(value) -> str:
    """A short JSON-like rendering of a value for an error message."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value) -> bool:
    return _is_int(value) or isinstance(value, (float, np.floating))


def describe(annotation) -> str:
    """What an annotation accepts, in words: 'a number', 'null or an integer', 'one of "a", "b"'."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is bool:
        return "a boolean (true or false)"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is str:
        return "a string"
    if annotation is type(None):
        return "null"
    if origin is typing.Union:
        parts = [describe(a) for a in args if a is not type(None)]
        return ("null or " if type(None) in args else "") + " or ".join(parts)
    if origin is typing.Literal:
        return "one of " + ", ".join(shown(a) for a in args)
    if annotation in (tuple, list) or origin in (tuple, list, typing.Sequence, _abc_sequence()):
        inner = [a for a in args if a is not Ellipsis]
        if origin is tuple and len(inner) > 1 and Ellipsis not in args and len(set(inner)) == 1:
            return f"a list of {len(inner)} {_plural(inner[0])}"
        return f"a list of {_plural(inner[0])}" if inner else "a list"
    if annotation is dict or origin is dict:
        return "an object"
    return getattr(annotation, "__name__", str(annotation))


def _plural(annotation) -> str:
    words = describe(annotation)
    for single, many in (("an integer", "integers"), ("a number", "numbers"), ("a string", "strings"),
                         ("a boolean (true or false)", "booleans"), ("a list", "lists")):
        if words.startswith(single):
            return many + words[len(single):]
    return words


def _abc_sequence():
    import collections.abc
    return collections.abc.Sequence


def matches(value, annotation) -> bool:
    """Whether plain data `value` has the type `annotation` asks for (unknown annotations accept anything)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    if annotation is bool:
        return isinstance(value, (bool, np.bool_))
    if annotation is int:
        return _is_int(value)
    if annotation is float:
        return _is_number(value)
    if annotation is str:
        return isinstance(value, str)
    if annotation is type(None):
        return value is None
    if origin is typing.Union:
        return any(matches(value, a) for a in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if annotation in (tuple, list) or origin in (tuple, list, typing.Sequence, _abc_sequence()):
        if not isinstance(value, (list, tuple)):
            return False
        inner = [a for a in args if a is not Ellipsis]
        if origin is tuple and inner and Ellipsis not in args:            # Tuple[float, float]: fixed length
            return len(value) == len(inner) and all(matches(v, a) for v, a in zip(value, inner))
        return all(matches(v, inner[0]) for v in value) if inner else True
    if annotation is dict or origin is dict:
        return isinstance(value, dict)
    if inspect.isclass(annotation):
        return isinstance(value, annotation)
    return True                                                        # a class of its own (Generator, SDE ...)


def check_value(value, annotation, path: str) -> None:
    """ValueError `path: expected <what annotation accepts>, got <value>` unless value matches."""
    if not matches(value, annotation):
        raise ValueError(f"{path}: expected {describe(annotation)}, got {shown(value)}")


def parameter_types(fn: Callable) -> Optional[dict]:
    """{name: annotation} of fn's keyword parameters (a class: its __init__), or None if fn takes **kwargs."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    try:
        hints = typing.get_type_hints(target)
    except Exception:                                               # noqa: BLE001 (unresolvable annotations)
        hints = {}
    return {name: hints.get(name, Any) for name, p in signature.parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name != "self"}


def check_kwargs(fn: Callable, values: dict, path: str, skip: Iterable[str] = ()) -> None:
    """Check that `values` are keyword arguments `fn` takes, of the types it annotates; errors name `path.key`."""
    check_value(values, dict, path)
    types = parameter_types(fn)
    if types is None:
        return
    unknown = sorted(set(values) - set(types) - set(skip))
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {unknown}; known fields: {sorted(types)}")
    for key, value in values.items():
        if key in types:
            check_value(value, types[key], f"{path}.{key}")


def check_depth(value, path: str, max_depth: int = MAX_DEPTH) -> None:
    """ValueError when `value` nests lists/objects more than `max_depth` levels deep (walked without recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            raise ValueError(f"{path}: nested more than {max_depth} levels deep")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, depth + 1) for v in item)
