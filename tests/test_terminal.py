"""Tests of cosched.terminal: what is escaped, what is kept, and that JSON stays exact."""

import json
import os

import pytest

from cosched.terminal import escape, escape_json, escape_lines


@pytest.mark.parametrize("raw, shown", [
    ("a\nb\tc\rd", "a\\nb\\tc\\rd"),
    ("\x00\x07\x1b[2J\x1f", "\\x00\\x07\\x1b[2J\\x1f"),
    ("\x7f\x80\x85\x9b\x9f", "\\x7f\\x80\\x85\\x9b\\x9f"),
    ("\u2028\u2029\u200e\u200f\u202a\u202e\u2066\u2069", "\\u2028\\u2029\\u200e\\u200f\\u202a"
                                                         "\\u202e\\u2066\\u2069"),
    (os.fsdecode(b"caf\xe9"), "caf\\xe9"),        # not UTF-8: the byte itself
    ("\ud800\udc10", "\\ud800\\udc10"),           # other lone surrogates
])
def test_unsafe_characters_become_visible_escapes(raw, shown):
    assert escape(raw) == shown
    escape(raw).encode("ascii")


def test_printable_text_is_kept_as_it_is():
    text = "plain ASCII, é, ✓, 日本語, emoji 🙂, a backslash \\x1b as text"
    assert escape(text) == text


def test_escape_lines_keeps_only_the_line_breaks():
    assert escape_lines("one\x1b\ntwo\r\n") == "one\\x1b\ntwo\\r\n"


def test_escape_json_keeps_the_value_and_the_layout():
    value = {"k\x9b": ["\x1b\x85\u202e", os.fsdecode(b"\xff"), "é"]}
    text = json.dumps(value, ensure_ascii=False, indent=2)
    safe = escape_json(text)
    assert json.loads(safe) == value
    assert safe.count("\n") == text.count("\n")
    assert "é" in safe and "\\u0085" in safe and "\\udcff" in safe
    safe.encode("utf-8")
