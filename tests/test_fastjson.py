"""Tests of cosched.fastjson: orjson and the standard library read and write the same
values, whichever does the work (orjson is in the test extra; where it is missing
the orjson cases are skipped and the standard library is still checked)."""

import json

import pytest

from cosched import fastjson

TEXTS = [
    b'{"a":[1,2.5,-0.0,1e+16,1e-07,true,false,null,"x"]}',
    b'{"id":9223372036854775807,"neg":-9223372036854775808}',
    b'[18446744073709551616,-9223372036854775809,123456789012345678901234567890]',
    b'{"name":"t\\u00e2che\\u202e","raw":"\xc3\xa2\xe2\x80\xae","nul":"\\u0000"}',
    b'["\\ud800","\\udcff x"]',                       # lone surrogates: orjson refuses them
    b'{"a":1,"a":2}',
    b'[' * 200 + b']' * 200,
    b'"just a string"',
]
NOT_JSON = [b'NaN', b'[Infinity]', b'{"a":-Infinity}', b'[1,', b'{"a" 1}', b'\xff']


@pytest.fixture(params=["orjson", "simdjson", "stdlib"])
def way(request, monkeypatch):
    """Every text goes to orjson (ORJSON_FROM = 0), every check to simdjson
    (CHECK_FAST_FROM = 0), or both are taken away."""
    monkeypatch.delenv("COSCHED_PURE_PYTHON", raising=False)
    monkeypatch.setattr(fastjson, "orjson", False)
    monkeypatch.setattr(fastjson, "validator", False)
    if request.param == "orjson":
        pytest.importorskip("orjson")
        monkeypatch.setattr(fastjson, "orjson", None)   # imported on first use
        monkeypatch.setattr(fastjson, "ORJSON_FROM", 0)
    elif request.param == "simdjson":
        pytest.importorskip("simdjson")
        monkeypatch.setattr(fastjson, "validator", None)
        monkeypatch.setattr(fastjson, "CHECK_FAST_FROM", 0)
    return request.param


@pytest.mark.parametrize("text", TEXTS)
def test_each_way_reads_what_the_standard_library_reads(way, text):
    expected = json.loads(text.decode())
    value = fastjson.loads(text)
    assert value == expected and _types(value) == _types(expected)
    fastjson.check(text)
    assert (fastjson.orjson is not False) == (way == "orjson")
    assert (fastjson.validator is not False) == (way == "simdjson")


@pytest.mark.parametrize("text", NOT_JSON)
def test_neither_way_reads_what_is_not_json(way, text):
    with pytest.raises(ValueError):
        fastjson.loads(text)
    with pytest.raises(ValueError):
        fastjson.check(text)


@pytest.mark.parametrize("text", TEXTS[:-2])
def test_each_way_writes_compact_json_of_the_same_value(way, text):
    value = json.loads(text.decode())
    out = fastjson.dumps(value)
    assert json.loads(out) == value and _types(json.loads(out)) == _types(value)
    assert ", " not in out and ": " not in out
    if "\u00e2" in str(value):
        assert "\u00e2" in out   # kept, not \u escaped


NOT_JSON_TOO = [b'', b'{"a":1}x', b'{"a":1}\x00', b'["\x01"]', b'[' * 2000 + b']' * 2000]


@pytest.mark.parametrize("text", NOT_JSON_TOO)
def test_a_check_refuses_what_is_not_json_whichever_way(way, text):
    with pytest.raises((ValueError, RecursionError)):
        fastjson.check(text)


def test_simdjson_checks_a_big_text_without_reading_it(monkeypatch):
    pytest.importorskip("simdjson")
    monkeypatch.delenv("COSCHED_PURE_PYTHON", raising=False)
    monkeypatch.setattr(fastjson, "validator", None)
    monkeypatch.setattr(fastjson, "orjson", False)
    read: list[int] = []
    monkeypatch.setattr(fastjson, "_std_loads", lambda data: read.append(len(data)))
    big = b'{"tasks":[' + b",".join(b'{"id":%d,"name":"t"}' % i for i in range(20000)) + b"]}"
    assert len(big) >= fastjson.CHECK_FAST_FROM
    fastjson.check(big)
    fastjson.check(b'[' + b"1," * 200000 + b'18446744073709551616]')   # simdjson refuses it
    fastjson.check(b'[1]')   # small: no simdjson
    assert read == [400_022, 3]


def test_orjson_is_not_imported_for_a_small_text(monkeypatch):
    monkeypatch.setattr(fastjson, "orjson", None)
    assert fastjson.loads(b'{"a":1}') == {"a": 1}
    assert fastjson.orjson is None


def test_cosched_pure_python_keeps_orjson_out(monkeypatch):
    monkeypatch.setattr(fastjson, "orjson", None)
    monkeypatch.setattr(fastjson, "ORJSON_FROM", 0)
    monkeypatch.setenv("COSCHED_PURE_PYTHON", "1")
    assert fastjson.loads(b"[1]") == [1] and fastjson.orjson is False
    monkeypatch.setattr(fastjson, "validator", None)
    monkeypatch.setattr(fastjson, "CHECK_FAST_FROM", 0)
    fastjson.check(b"[1]")
    assert fastjson.validator is False


def _types(value):
    """The value's shape with the type of every leaf (1 and 1.0 compare equal)."""
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_types(v) for v in value]
    return type(value).__name__
