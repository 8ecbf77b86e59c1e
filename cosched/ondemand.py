"""Fields kept in a record made on first use.

A daemon may hold a million tasks, and most of them never set most of what a
task can have (how it ended, who waits for it, why a hook started it). Such
fields live in a small record that an object makes the first time one of them
is given a value other than its default; until then the object pays one slot
(None) for all of them, and reading a field gives its default.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any

__all__ = ["field"]


def field(record: str, make: Callable[[], Any], name: str, default: Any, doc: str) -> property:
    """A property for ``name`` of the record in the slot ``record`` (made by ``make``).
    Assigning the default (``is``) to an object without a record makes none."""
    read, record_of = attrgetter(name), attrgetter(record)

    def get(obj: Any) -> Any:
        rec = record_of(obj)
        return default if rec is None else read(rec)

    def put(obj: Any, value: Any) -> None:
        rec = record_of(obj)
        if rec is None:
            if value is default:
                return
            rec = make()
            setattr(obj, record, rec)
        setattr(rec, name, value)
    return property(get, put, doc=doc)
