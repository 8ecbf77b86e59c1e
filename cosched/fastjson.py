"""JSON for coschedctl's answers: orjson when it is installed, else the standard library.

A status of 100,000 tasks is one line of about 40 MB: the standard library reads
it in about 0.8 s and writes it in 1 s, orjson in 0.4 s and 0.07 s. But importing
orjson takes some 20 ms (it imports dataclasses, uuid, datetime...), more than a
small command's whole answer costs, so it is imported only for a text of
``ORJSON_FROM`` bytes or more, and writes with it only once imported.

orjson is optional (``pip install 'cosched[fast]'``); with or without it the values
read and the JSON written mean the same, because wherever orjson would differ from
the standard library, the standard library does the work:

- integers beyond 64 bits: orjson reads them as floats, so a text holding a run of
  19 or more digits (such an integer needs one) is read by the standard library;
- lone surrogate escapes (``"\\ud800"``) and nesting deeper than 1024: orjson
  refuses them, the standard library reads them;
- ``NaN`` and ``Infinity`` are not JSON: both refuse them (coschedd never writes
  them), so a value read never holds a float that JSON cannot write;
- writing: orjson refuses integers beyond 64 bits and lone surrogates; then the
  standard library writes them.

``check`` (is this JSON? asked of every answer ``coschedctl --json`` prints as it
came) needs no values: from ``CHECK_FAST_FROM`` bytes it asks simdjson
(``pysimdjson``, in the same extra), which validates the whole text (syntax,
UTF-8, nothing after it) without making a Python object: 2 MB in about 10 ms,
where reading it costs 50 ms. What simdjson refuses (a long integer, ``1e999``,
a lone surrogate) goes to ``loads``'s way, which decides.

Output is compact (no spaces after separators) and keeps non-ASCII characters as
they are (``ensure_ascii=False``); ``cosched.terminal.escape_json`` makes it safe
to print. ``COSCHED_PURE_PYTHON=1`` uses the standard library only (as it turns
off the coroutine core's C speed-ups), which is also how the tests check that
both ways agree.
"""

from __future__ import annotations

import importlib
import json
import os

__all__ = ["ORJSON_FROM", "CHECK_FAST_FROM", "loads", "dumps", "check"]

ORJSON_FROM = 1 << 21   # bytes; below, the import would cost more than orjson saves
orjson = None   # the module once imported; False: not installed, or not to be used
CHECK_FAST_FROM = 1 << 18   # bytes; below, importing simdjson (3-5 ms) saves nothing
validator = None   # a simdjson.Parser once made; False: not installed, or not to be used

_COMPACT = (",", ":")
_DIGITS = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19   # 19 digits: beyond the 64-bit integers when negative


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _optional(name: str):
    """The optional module ``name``, or False when it is not installed or
    COSCHED_PURE_PYTHON asks for the standard library only."""
    if os.environ.get("COSCHED_PURE_PYTHON"):
        return False
    try:
        return importlib.import_module(name)
    except ImportError:
        return False


def _fast(data: bytes) -> bool:
    """Whether to read ``data`` with orjson; imports it the first time."""
    global orjson
    if orjson is None and len(data) >= ORJSON_FROM:
        orjson = _optional("orjson")
    return bool(orjson) and len(data) >= ORJSON_FROM


def _validator(data: bytes, part_of_more: bool = False):
    """simdjson's parser when ``data`` is long enough to be worth it (or is one of
    many parts of a long answer); makes it the first time."""
    global validator
    if len(data) < CHECK_FAST_FROM and not part_of_more or validator is False:
        return None
    if validator is None:
        module = _optional("simdjson")
        validator = module.Parser() if module else False
    return validator or None


def _std_loads(data: bytes) -> object:
    return json.loads(data.decode("utf-8"), parse_constant=_no_constant)


def loads(data: bytes) -> object:
    """The value of a JSON text (UTF-8). Raises ValueError (or RecursionError) when
    it is not JSON."""
    if _fast(data) and _LONG_NUMBER not in data.translate(_DIGITS):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass   # maybe something only the standard library reads; else its error
    return _std_loads(data)


def check(data: bytes, part_of_more: bool = False) -> None:
    """Raise ValueError (or RecursionError) unless ``data`` is a JSON text. Quicker
    than ``loads`` where the value is not needed: a long integer read as a float
    does not matter here. ``part_of_more``: one page of a long answer, checked by
    simdjson whatever its length (its import is paid once for all of them)."""
    parser = _validator(data, part_of_more)
    if parser is not None:
        try:
            parser.parse(data)   # the whole text, validated; values made only if asked for
            return
        except (ValueError, RuntimeError):   # perhaps what only json reads (RuntimeError:
            pass                               # deeper than 1024; ValueError: the rest)
    if _fast(data):
        try:
            orjson.loads(data)
            return
        except orjson.JSONDecodeError:
            pass
    _std_loads(data)


def dumps(value: object) -> str:
    """Compact JSON text of ``value``, non-ASCII characters kept."""
    if orjson:
        try:
            return orjson.dumps(value).decode("utf-8")
        except TypeError:   # orjson.JSONEncodeError: a long integer, a lone surrogate, ...
            pass
    return json.dumps(value, separators=_COMPACT, ensure_ascii=False)
