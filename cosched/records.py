"""``NamedTuple`` for modules coschedctl imports, without importing ``typing``.

``typing`` takes 4-5 ms to import, a sixth of a small coschedctl command's budget
(at most twice ``python -c pass``), and those modules need it only for
``NamedTuple``. This one takes the same class syntax (fields as annotations,
defaults as values, methods and properties) and makes the same thing: a
``collections.namedtuple`` with the class's methods. Type checkers read
``typing.NamedTuple`` instead::

    TYPE_CHECKING = False
    if TYPE_CHECKING:
        from typing import NamedTuple
    else:
        from .records import NamedTuple
"""

from __future__ import annotations

import collections

__all__ = ["NamedTuple"]

_CLASS_KEYS = {"__annotations__", "__module__", "__qualname__", "__dict__", "__weakref__"}


class _Maker(type):
    def __new__(mcls, name: str, bases: tuple, namespace: dict) -> type:
        if not bases:   # NamedTuple itself
            return super().__new__(mcls, name, bases, namespace)
        fields = list(namespace.get("__annotations__", {}))
        defaults = [namespace[f] for f in fields if f in namespace]
        if any(f not in namespace for f in fields[len(fields) - len(defaults):]):
            raise TypeError(f"{name}: a field without a default follows one with a default")
        cls = collections.namedtuple(name, fields, defaults=defaults,
                                     module=namespace.get("__module__"))
        for key, value in namespace.items():
            if key not in _CLASS_KEYS and key not in fields:
                setattr(cls, key, value)
        return cls


class NamedTuple(metaclass=_Maker):
    """Subclass it like typing.NamedTuple; the subclass is a collections.namedtuple."""
