"""Making text that others chose safe to show on a terminal.

Task names, file names, yielded values and error texts come from job files and
from whoever wrote them; printed raw, a newline forges a line of output and an
escape sequence rewrites the screen (or, on some terminals, types for the user).
``escape`` shows every control character as a backslash escape: C0 (newline and
tab included), DEL, C1, and the Unicode line separators and bidirectional
overrides that can disguise a line. Names that were not valid UTF-8 reach Python
as surrogate escapes (os.fsdecode); they are shown as the original byte, ``\\xNN``,
and other lone surrogates as ``\\udNNN``, so printing never raises
UnicodeEncodeError.

``escape_json`` does the same for JSON text without changing its meaning: those
characters can only occur inside JSON strings, where ``\\uNNNN`` stands for them.
"""

from __future__ import annotations

import re

__all__ = ["escape", "escape_lines", "escape_json"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# DEL, C1; line and paragraph separators; bidi embeddings, overrides, isolates and
# marks; lone surrogates. json.dumps escapes C0 in strings; outside them it writes
# only the newlines of its own layout.
_UNSAFE_IN_JSON = ("\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069"
                   "\ud800-\udfff")
_UNSAFE_JSON = f"[{_UNSAFE_IN_JSON}]"
_UNSAFE = f"[\x00-\x1f{_UNSAFE_IN_JSON}]"  # and C0
# The patterns are compiled on first use (re's cache): most of coschedctl's output
# takes the fast paths below, and compiling them costs a small command 1-2 ms.


def _one(match: re.Match) -> str:
    ch = match.group()
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, as os.fsdecode keeps it
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with every unsafe character replaced by a visible escape."""
    if text.isascii() and text.isprintable():   # the common case, at C speed
        return text
    return re.sub(_UNSAFE, _one, text)


def escape_lines(text: str) -> str:
    """Like ``escape``, but keeps the line breaks (\\n) of multi-line text."""
    return "\n".join(escape(line) for line in text.split("\n"))


def escape_json(text: str) -> str:
    """JSON text with unsafe characters written as ``\\uNNNN``: the same JSON value,
    safe to print. (json.dumps already escapes C0 and keeps lone surrogates raw.)"""
    if text.isascii() and "\x7f" not in text:   # the common case, at C speed
        return text
    return re.sub(_UNSAFE_JSON, lambda m: f"\\u{ord(m.group()):04x}", text)
