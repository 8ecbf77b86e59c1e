"""Tests of cosched.records: the class syntax of typing.NamedTuple, without typing."""

import collections
import typing

import pytest

from cosched.records import NamedTuple


class Point(NamedTuple):
    """A point."""

    x: int
    y: int = 0
    label: str = "origin"

    @property
    def norm1(self):
        return abs(self.x) + abs(self.y)

    def moved(self, dx):
        return self._replace(x=self.x + dx)


class TypingPoint(typing.NamedTuple):
    x: int
    y: int = 0
    label: str = "origin"


def test_it_makes_what_typing_namedtuple_makes():
    p = Point(3, -4)
    assert isinstance(p, tuple) and p == (3, -4, "origin") == TypingPoint(3, -4)
    assert Point._fields == TypingPoint._fields and Point._field_defaults == TypingPoint._field_defaults
    assert repr(p) == "Point(x=3, y=-4, label='origin')" and Point.__doc__ == "A point."
    assert p.norm1 == 7 and p.moved(1) == Point(4, -4) and Point.__module__ == __name__
    assert issubclass(Point, tuple) and hasattr(Point, "_make")
    with pytest.raises(AttributeError):
        p.x = 5
    with pytest.raises(TypeError):
        Point()


def test_a_field_without_default_after_one_with_a_default_is_refused():
    with pytest.raises(TypeError, match="Bad: a field without a default follows one with a default"):
        class Bad(NamedTuple):
            a: int = 1
            b: int


def test_the_result_is_a_collections_namedtuple():
    assert type(Point) is type(collections.namedtuple("P", "a"))
