"""Bounded, guarded text of objects that jobs hand to the daemon.

Whatever a job yields, returns or raises is untrusted: its ``__repr__`` or
``__str__`` may raise, loop, or build a string of gigabytes, and a value may be
nested thousands deep. The daemon renders such objects only through these
functions, which never raise and bound both the length of the text and the
depth they descend to. (JSON answers have their own guard in
``cosched.protocol.encode``.)
"""

from __future__ import annotations

import reprlib
from typing import Any

__all__ = ["safe_repr", "safe_str", "describe_exception"]

MAX_TEXT = 300   # characters of one rendered value in a log line or an error message
MAX_DEPTH = 6    # containers deeper than this render as "[...]"


class _BoundedRepr(reprlib.Repr):
    """reprlib with guarded reprs of leaves: reprlib bounds containers and strings,
    but calls a leaf's own __repr__ unguarded."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = MAX_DEPTH
        self.maxstring = MAX_TEXT
        self.maxother = MAX_TEXT
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = 20
        self.maxdeque = self.maxdict = self.maxarray = 20

    def repr_instance(self, obj: Any, level: int) -> str:
        text = _guarded(repr, obj)
        return _clip(text, self.maxother)


def _guarded(fn, obj: Any) -> str:
    try:
        text = fn(obj)
        if type(text) is not str:  # a __repr__/__str__ returning a str subclass or junk
            text = str.__str__(text) if isinstance(text, str) else "<invalid text>"
        return text
    except BaseException:  # noqa: BLE001 - any failure of job code renders as a placeholder
        return f"<unrepresentable {_type_name(obj)}>"


def _type_name(obj: Any) -> str:
    try:
        return type(obj).__name__
    except BaseException:  # noqa: BLE001 - a metaclass can break even this
        return "object"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


_repr = _BoundedRepr()


def safe_repr(obj: Any, limit: int = MAX_TEXT) -> str:
    """repr(obj), at most ``limit`` characters and MAX_DEPTH levels; never raises."""
    try:
        text = _repr.repr(obj)
    except BaseException:  # noqa: BLE001 - e.g. RecursionError inside a container's items
        text = f"<unrepresentable {_type_name(obj)}>"
    return _clip(text, limit)


def safe_str(obj: Any, limit: int = MAX_TEXT) -> str:
    """str(obj), bounded and guarded like safe_repr."""
    if type(obj) is str:
        return _clip(obj, limit)
    return _clip(_guarded(str, obj), limit)


def describe_exception(exc: BaseException, limit: int = MAX_TEXT) -> str:
    """'TypeError: message' for operators; the message part bounded and guarded."""
    name = _type_name(exc)
    message = safe_str(exc, limit)
    return f"{name}: {message}" if message else name
