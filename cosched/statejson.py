"""What ``task.state`` may hold, and its one encoding: JSON that reads back equal.

``task.state`` is saved as JSON text, so it may hold dicts with string keys,
lists, strings, ints, floats, bools and None, nested. Anything JSON would
refuse, or would silently change (a tuple comes back as a list, an int key as a
string, NaN is not JSON), is refused with ``StateError`` naming the key, so that
what a job saves is exactly what its next task gets back.

The common case costs C speed: ``json.dumps``, then ``json.loads`` of the text
compared with the original. Only when that fails does a walk over the state
find the offending key for the message.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["StateError", "encode_state", "decode_state", "MAX_STATE_BYTES"]

MAX_STATE_BYTES = 16 << 20   # one task.state, encoded
_JSON_TYPES = (dict, list, str, int, float, bool, type(None))
# One encoder for every call (json.dumps with options builds one each time). ASCII
# output: lone surrogates in strings are escaped, not a failure when the text is stored.
_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


class StateError(ValueError):
    """task.state cannot be saved (the message names the key), or saving it failed."""


def encode_state(state: Any) -> str:
    """The JSON text of ``state``; StateError if it is not a dict of JSON values that
    read back equal, or is larger than MAX_STATE_BYTES."""
    if type(state) is not dict:
        raise StateError(f"task.state must be a dict, not {type(state).__name__}")
    try:
        text = _ENCODER.encode(state)
        same = json.loads(text) == state
    except Exception:  # noqa: BLE001 - TypeError, ValueError, RecursionError, a job's __eq__
        text, same = "", False
    if not same:
        raise StateError(_problem(state, "task.state", 0, set()) or
                         "task.state cannot be saved: it does not read back equal as JSON")
    if len(text) > MAX_STATE_BYTES:
        raise StateError(f"task.state is {len(text)} characters as JSON, more than the "
                         f"{MAX_STATE_BYTES} allowed; keep large data in files")
    return text


def decode_state(text: str) -> dict:
    return json.loads(text)


def _problem(value: Any, path: str, depth: int, active: set[int]) -> str | None:
    """The first thing in ``value`` that JSON cannot hold exactly, as a message."""
    kind = type(value)
    if kind not in _JSON_TYPES:
        what = "a subclass of " + next(t.__name__ for t in _JSON_TYPES if isinstance(value, t)) \
            if isinstance(value, _JSON_TYPES) else f"a {kind.__name__}"
        hint = "; it would come back as a list: store a list" if kind is tuple else ""
        return (f"{path} is {what}{hint}; task.state holds only JSON values (dict with string "
                "keys, list, str, int, float, bool, None)")
    if kind is float and not math.isfinite(value):
        return f"{path} is {value}; JSON has no NaN or infinity"
    if kind not in (dict, list):
        return None
    if depth > 500:   # only reached when json itself gave up (its recursion limit)
        return f"{path} is nested too deeply (more than 500 levels)"
    if id(value) in active:
        return f"{path} contains itself (a cycle); JSON cannot hold it"
    active.add(id(value))
    try:
        if kind is list:
            items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
        else:
            for k in value:
                if type(k) is not str:
                    return (f"{path} has the key {k!r} ({type(k).__name__}); keys must be "
                            "strings (JSON would turn it into a string)")
            items = ((f"{path}[{k!r}]", v) for k, v in value.items())
        for sub, v in items:
            if problem := _problem(v, sub, depth + 1, active):
                return problem
    finally:
        active.discard(id(value))
    return None
