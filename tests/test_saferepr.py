"""Bounded, guarded rendering of objects that come from jobs."""

from __future__ import annotations

from cosched.saferepr import MAX_TEXT, describe_exception, safe_repr, safe_str


class RaisingRepr:
    def __repr__(self):
        raise ValueError("no")

    __str__ = __repr__


class ExitingRepr:
    def __repr__(self):
        raise SystemExit(1)


class NotText:
    def __repr__(self):
        return 42


def test_raising_reprs_become_placeholders():
    assert safe_repr(RaisingRepr()) == "<unrepresentable RaisingRepr>"
    assert safe_repr(ExitingRepr()) == "<unrepresentable ExitingRepr>"
    assert safe_repr(NotText()) == "<unrepresentable NotText>"
    assert safe_str(RaisingRepr()) == "<unrepresentable RaisingRepr>"
    assert safe_repr([1, RaisingRepr()]) == "[1, <unrepresentable RaisingRepr>]"


def test_length_and_depth_are_bounded():
    assert len(safe_repr("x" * 10_000)) <= MAX_TEXT
    assert len(safe_str("x" * 10_000, 50)) == 50
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    text = safe_repr(deep)
    assert text.startswith("[[[[") and "..." in text and len(text) < 100
    wide = {i: "v" * 100 for i in range(1000)}
    assert len(safe_repr(wide)) <= MAX_TEXT


def test_describe_exception():
    class BadStr(Exception):
        def __str__(self):
            raise RuntimeError

    assert describe_exception(ValueError("bad value")) == "ValueError: bad value"
    assert describe_exception(KeyboardInterrupt()) == "KeyboardInterrupt"
    assert describe_exception(BadStr()) == "BadStr: <unrepresentable BadStr>"
    assert len(describe_exception(ValueError("x" * 10_000))) <= MAX_TEXT + len("ValueError: ")
