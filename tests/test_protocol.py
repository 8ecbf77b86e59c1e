"""Tests of cosched.protocol: encoding, request validation and the error codes."""

import dataclasses
import datetime
import enum
import json
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cosched import protocol
from cosched.protocol import ControlError


def rejected(line: bytes) -> ControlError:
    with pytest.raises(ControlError) as info:
        protocol.decode_request(line)
    return info.value


def test_encode_is_one_compact_json_line():
    data = protocol.encode({"id": 1, "ok": True, "result": {"a": [1, 2], "s": "é"}})
    assert data == '{"id":1,"ok":true,"result":{"a":[1,2],"s":"é"}}\n'.encode()
    assert data.count(b"\n") == 1


def test_encode_renders_non_json_values_with_repr():
    class Thing:
        def __repr__(self):
            return "<Thing 7>"

    decoded = json.loads(protocol.encode({"values": [Thing(), {1, 2}, (3, 4)]}))
    assert decoded == {"values": ["<Thing 7>", "{1, 2}", [3, 4]]}


def test_encode_survives_cycles_odd_keys_nan_and_broken_repr():
    class Broken:
        def __repr__(self):
            raise RuntimeError("no")

    cyclic = []
    cyclic.append(cyclic)
    data = protocol.encode({"c": cyclic, (1, 2): "tuple key", 3: "int key",
                            "nan": float("nan"), "b": Broken()})
    decoded = json.loads(data)  # strict enough: NaN would have been emitted as NaN
    assert decoded["(1, 2)"] == "tuple key" and decoded["3"] == "int key"
    assert decoded["nan"] is None
    assert decoded["b"] == "<unrepresentable Broken>"
    assert isinstance(decoded["c"][0], str)
    assert b"NaN" not in data


def test_encode_escapes_lone_surrogates():
    data = protocol.encode({"s": "a\udc80b"})
    data.decode("utf-8")  # valid UTF-8
    assert json.loads(data) == {"s": "a\udc80b"}


def test_decode_request_fills_defaults():
    request = protocol.decode_request(b'{"id": "x", "cmd": "resume", "args": {"task": 3}}\n')
    assert request == protocol.Request("x", "resume", {"task": 3, "values": [], "timeout": 30})


def test_decode_request_without_args_and_with_optional_arg():
    assert protocol.decode_request(b'{"id": 4, "cmd": "status"}').args == {
        "task": None, "job": None, "state": None, "columns": None, "pages": False, "limit": None}
    assert protocol.decode_request(
        b'{"id": 4, "cmd": "status", "args": {"task": "t", "state": "failed"}}').args == {
        "task": "t", "job": None, "state": "failed", "columns": None, "pages": False,
        "limit": None}


@pytest.mark.parametrize("columns", [[], ["id", "colour"], ["id", 3], "id", [["id"]],
                                     ["id"] * 13])
def test_status_columns_must_be_a_short_list_of_row_fields(columns):
    line = json.dumps({"id": 1, "cmd": "status", "args": {"columns": columns}}).encode()
    with pytest.raises(protocol.ControlError) as e:
        protocol.decode_request(line)
    assert e.value.code == protocol.BAD_REQUEST
    assert "argument 'columns' of 'status' must be a non-empty list of row fields (id, name" \
        in str(e.value)


def test_status_columns_are_row_fields_in_any_order():
    line = b'{"id": 1, "cmd": "status", "args": {"columns": ["age", "id"]}}'
    assert protocol.decode_request(line).args["columns"] == ["age", "id"]


def test_status_state_filter_must_be_a_task_state():
    with pytest.raises(ControlError) as info:
        protocol.decode_request(b'{"id": 4, "cmd": "status", "args": {"state": "sleepy"}}')
    assert info.value.code == protocol.BAD_REQUEST
    assert "one of starting, running, waiting" in info.value.message


def test_defaults_are_not_shared_between_requests():
    first = protocol.decode_request(b'{"id": 1, "cmd": "resume", "args": {"task": 1}}')
    first.args["values"].append("mutated")
    second = protocol.decode_request(b'{"id": 2, "cmd": "resume", "args": {"task": 1}}')
    assert second.args["values"] == []


def test_request_round_trip_through_encode():
    line = protocol.encode(protocol.make_request(9, "start", {"job": "ticker"}))
    assert protocol.decode_request(line) == protocol.Request(9, "start", {"job": "ticker",
                                                                         "force": False})


def test_not_json_is_bad_request_without_id():
    error = rejected(b'{"id": 1, "cmd": ')
    assert (error.code, error.request_id) == ("bad-request", None)
    assert "JSON" in error.message


def test_invalid_utf8_is_bad_request():
    assert rejected(b'{"id": 1, "cmd": "\xff"}').code == "bad-request"


def test_nan_is_not_json():
    error = rejected(b'{"id": 1, "cmd": "resume", "args": {"task": 1, "timeout": NaN}}')
    assert error.code == "bad-request"


def test_json_array_is_bad_request():
    error = rejected(b'[1, "ping"]')
    assert error.code == "bad-request" and "object" in error.message


def test_missing_id_is_bad_request():
    error = rejected(b'{"cmd": "ping"}')
    assert (error.code, error.request_id) == ("bad-request", None)
    assert "'id'" in error.message


@pytest.mark.parametrize("bad_id", [b"true", b"1.5", b"null", b"[1]"])
def test_id_of_wrong_type_is_bad_request(bad_id):
    error = rejected(b'{"id": ' + bad_id + b', "cmd": "ping"}')
    assert (error.code, error.request_id) == ("bad-request", None)


def test_cmd_of_wrong_type_is_bad_request_with_id():
    error = rejected(b'{"id": 7, "cmd": 5}')
    assert (error.code, error.request_id) == ("bad-request", 7)
    assert "'cmd'" in error.message


def test_args_not_an_object_is_bad_request():
    error = rejected(b'{"id": 7, "cmd": "ping", "args": [1]}')
    assert (error.code, error.request_id) == ("bad-request", 7)
    assert "'args'" in error.message and "object" in error.message


def test_wrong_arg_type_names_argument_and_type():
    error = rejected(b'{"id": 7, "cmd": "show", "args": {"task": [1]}}')
    assert (error.code, error.request_id) == ("bad-request", 7)
    assert "'task'" in error.message and "a string or an integer" in error.message


def test_boolean_is_not_taken_for_a_number():
    error = rejected(b'{"id": 7, "cmd": "resume", "args": {"task": 1, "timeout": true}}')
    assert error.code == "bad-request" and "'timeout'" in error.message


def test_negative_timeout_is_bad_request():
    error = rejected(b'{"id": 7, "cmd": "resume", "args": {"task": 1, "timeout": -1}}')
    assert error.code == "bad-request" and "'timeout'" in error.message


def test_missing_required_arg_is_bad_request():
    error = rejected(b'{"id": 7, "cmd": "start", "args": {}}')
    assert error.code == "bad-request" and "'job'" in error.message


def test_unknown_arg_is_bad_request():
    error = rejected(b'{"id": 7, "cmd": "ping", "args": {"loud": true}}')
    assert error.code == "bad-request" and "'loud'" in error.message


def test_unknown_command_lists_commands():
    error = rejected(b'{"id": "q", "cmd": "frobnicate"}')
    assert (error.code, error.request_id) == ("unknown-command", "q")
    assert "frobnicate" in error.message
    for name in protocol.COMMANDS:
        assert name in error.message


def test_command_table_has_the_commands():
    assert set(protocol.COMMANDS) == {"ping", "status", "show", "resume", "kill", "start",
                                      "reload", "jobs", "metrics", "logs", "events", "tree",
                                      "restart", "history"}
    assert all(spec.help for spec in protocol.COMMANDS.values())


def test_error_codes_are_documented():
    for code in protocol.ERROR_CODES:
        assert f"``{code}``" in protocol.__doc__


def test_ok_and_err_shapes():
    assert protocol.ok(1, {"x": 1}) == {"id": 1, "ok": True, "result": {"x": 1}}
    assert protocol.err(None, "busy", "later") == {
        "id": None, "ok": False, "error": {"code": "busy", "message": "later"}}


def test_decode_response_returns_result_or_raises():
    assert protocol.decode_response(protocol.encode(protocol.ok(3, [1]))) == \
        protocol.Response(3, [1])
    with pytest.raises(ControlError) as info:
        protocol.decode_response(protocol.encode(protocol.err(3, "no-such-task", "none")))
    assert (info.value.code, info.value.message, info.value.request_id) == \
        ("no-such-task", "none", 3)
    with pytest.raises(ValueError):
        protocol.decode_response(b'{"id": 3}\n')


# -- access levels ----------------------------------------------------------------

def test_every_command_has_a_level_and_only_reads_are_read():
    levels = {name: cmd.level for name, cmd in protocol.COMMANDS.items()}
    assert {name for name, level in levels.items() if level == protocol.READ} == \
        {"ping", "status", "show", "jobs", "metrics", "logs", "events", "tree", "history"}
    assert set(levels.values()) <= set(protocol.LEVELS)
    assert protocol.Command({}, "a command added later").level == protocol.CONTROL


def test_show_keeps_the_config_table_from_read_only_peers():
    assert protocol.COMMANDS["show"].private == ("config",)
    assert all(not cmd.private for name, cmd in protocol.COMMANDS.items() if name != "show")


# -- numbers and task references --------------------------------------------------

@pytest.mark.parametrize("timeout", [b"1" + b"0" * 400, b"-1", b"86400.5", b"1e308", b"-0.5"])
def test_timeout_is_range_checked_before_any_arithmetic(timeout):
    error = rejected(b'{"id": 1, "cmd": "resume", "args": {"task": 1, "timeout": '
                     + timeout + b"}}")
    assert error.code == "bad-request"
    assert "'timeout' of 'resume' must be a number from 0 to 86400" in error.message


def test_timeout_bounds_are_accepted():
    for timeout in (b"0", b"-0.0", b"86400", b"0.001"):
        request = protocol.decode_request(
            b'{"id": 1, "cmd": "resume", "args": {"task": 1, "timeout": ' + timeout + b"}}")
        assert request.args["timeout"] == float(timeout)


@pytest.mark.parametrize("task", [b"-1", str(2**63).encode(), b"1" + b"0" * 400])
def test_task_ids_out_of_range_are_bad_requests(task):
    for cmd in (b"show", b"kill", b"status"):
        error = rejected(b'{"id": 1, "cmd": "' + cmd + b'", "args": {"task": ' + task + b"}}")
        assert error.code == "bad-request" and "an id from 0 to 9223372036854775807" in \
            error.message


def test_start_force_must_be_a_boolean():
    assert protocol.decode_request(
        b'{"id": 1, "cmd": "start", "args": {"job": "j", "force": true}}').args["force"] is True
    assert rejected(b'{"id": 1, "cmd": "start", "args": {"job": "j", "force": 1}}').code == \
        "bad-request"


# -- fuzzing the decoder ----------------------------------------------------------

_ARG_NAMES = sorted({name for cmd in protocol.COMMANDS.values() for name in cmd.args})
_ODD_STRINGS = st.sampled_from(["\u00b2", "9" * 400, "１２", "\udcff", "\x00", "-1", " 1", "1.0",
                                "\x1b[2J", ""]) | st.text(max_size=12)
_NUMBERS = (st.integers(min_value=-10**600, max_value=10**600)
            | st.floats(allow_nan=False, allow_infinity=False))
_SCALARS = st.none() | st.booleans() | _NUMBERS | _ODD_STRINGS
JSON_VALUES = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(_ODD_STRINGS, inner, max_size=4), max_leaves=12)
REQUESTS = st.fixed_dictionaries(
    {"id": st.integers(-5, 5) | _ODD_STRINGS,
     "cmd": st.sampled_from(sorted(protocol.COMMANDS)) | _ODD_STRINGS},
    optional={"args": st.dictionaries(st.sampled_from(_ARG_NAMES) | _ODD_STRINGS, JSON_VALUES,
                                      max_size=4) | JSON_VALUES,
              "extra": JSON_VALUES})


def request_line(request: dict) -> bytes:
    return json.dumps(request).encode() + b"\n"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(REQUESTS.map(request_line), JSON_VALUES.map(request_line),
                 st.binary(max_size=120)))
def test_no_line_makes_the_decoder_fail_other_than_with_a_clear_error(line):
    try:
        request = protocol.decode_request(line)
    except ControlError as error:
        assert error.code in protocol.ERROR_CODES - {protocol.INTERNAL}, error
        assert error.message
        return
    spec = protocol.COMMANDS[request.cmd]
    assert set(request.args) == set(spec.args)


# -- encode_plain: status rows, with orjson when it is installed ----------------------

ROWS = [{"id": 1, "name": "a\u00e9", "busy": 1e-05, "age": 3.25, "yielded": [1, "x", None, True],
         "error": None, "steps": 2**40}]


@pytest.mark.parametrize("fast", [True, False])
def test_encode_plain_is_one_json_line_meaning_what_encode_means(monkeypatch, fast):
    if not fast:
        monkeypatch.setattr(protocol, "_orjson", None)
    elif protocol.orjson_module() is None:
        pytest.skip("orjson is not installed")
    data = protocol.encode_plain(ROWS)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert json.loads(data) == json.loads(protocol.encode(ROWS)) == ROWS


class Colour(enum.Enum):
    RED = 1


@dataclasses.dataclass
class Point:
    x: int


class Name(str):
    pass


ODD = [Point(1), datetime.date(2026, 1, 2), Name("n"), "lone \udc80", 2**70, float("nan"),
       {1: "int key"}]


@pytest.mark.parametrize("value", ODD, ids=lambda v: type(v).__name__)
def test_encode_plain_renders_odd_values_as_encode_does(value):
    """orjson would write a dataclass as an object and a date as ISO text, and cannot
    write the others: the answer must not depend on whether orjson is installed."""
    assert json.loads(protocol.encode_plain([value])) == json.loads(protocol.encode([value]))


def test_jsonable_is_what_encode_puts_on_the_wire():
    values = [Colour.RED, uuid.UUID(int=7), Point(2), float("inf"), {(1, 2): 3}, "ok"]
    plain = protocol.jsonable(values)
    assert json.loads(protocol.encode_plain(plain)) == json.loads(protocol.encode(values))
    assert plain[0] == repr(Colour.RED) and plain[1] == repr(uuid.UUID(int=7))


def test_chunked_pieces_join_into_one_response_line():
    rows = [{"id": i, "v": [Point(i)] if i == 3 else i} for i in range(7)]
    looked = [None, None, None, *rows[:3], None, None, *rows[3:], None]   # None: not taken
    answer = protocol.Chunked({"daemon": {"x": 1}}, "tasks", looked, lambda chunk: chunk,
                              {"job_errors": []}, size=2)
    line = b"".join(answer.pieces(5))
    assert line.count(b"\n") == 1
    assert json.loads(line) == json.loads(protocol.encode(protocol.ok(5, {
        "daemon": {"x": 1}, "tasks": rows, "job_errors": []})))


def test_chunked_pages_are_stream_lines_then_the_result_without_the_rows():
    rows = [{"id": i, "v": [Point(i)] if i == 3 else i} for i in range(7)]
    looked = [None, None, None, *rows[:3], None, None, *rows[3:], None]   # None: not taken
    answer = protocol.Chunked({"daemon": {"x": 1}}, "tasks", looked, lambda chunk: chunk,
                              {"job_errors": []}, size=2, paged=True)
    pieces = list(answer.pieces("r"))
    lines = [p for p in pieces if p]
    assert b"" in pieces   # a look that took nothing: the loop ran, nothing was sent
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)
    pages = [protocol.decode_response(line) for line in lines]
    assert all(p.item and p.id == "r" for p in pages[:-1]) and not pages[-1].item
    assert [row for p in pages[:-1] for row in p.result] == json.loads(
        protocol.encode(rows))   # (Point rendered as the encoder renders it)
    assert [len(p.result) for p in pages[:-1]] == [1, 2, 2, 2]   # at most size a page
    assert pages[-1].result == {"daemon": {"x": 1}, "tasks": [], "job_errors": []}


@pytest.mark.parametrize("pages", ["yes", 1, None, [True]])
def test_status_pages_must_be_a_boolean(pages):
    line = json.dumps({"id": 1, "cmd": "status", "args": {"pages": pages}}).encode()
    with pytest.raises(protocol.ControlError) as e:
        protocol.decode_request(line)
    assert e.value.code == protocol.BAD_REQUEST and "'pages'" in str(e.value)


@pytest.mark.parametrize("limit", [0, -1, "3", True, 2**63, 1.5])
def test_status_limit_must_be_a_positive_integer(limit):
    line = json.dumps({"id": 1, "cmd": "status", "args": {"limit": limit}}).encode()
    with pytest.raises(protocol.ControlError) as e:
        protocol.decode_request(line)
    assert e.value.code == protocol.BAD_REQUEST and "'limit'" in str(e.value)
