"""What task.state may hold: JSON values that read back equal, and errors naming the key."""

import json
import socket

import pytest

from cosched.statejson import MAX_STATE_BYTES, StateError, decode_state, encode_state


def test_json_values_round_trip_exactly():
    state = {"n": 3, "x": 1.5, "big": 10**30, "s": "é\u2603\udcff", "ok": True, "none": None,
             "list": [1, [2, {"k": "v"}]], "empty": {}}
    text = encode_state(state)
    assert text.isascii()   # lone surrogates are escaped, so SQLite can store the text
    assert decode_state(text) == state
    assert json.loads(text) == state


@pytest.mark.parametrize("state, message", [
    ({"conn": socket.socket()}, "task.state['conn'] is a socket; task.state holds only JSON"),
    ({"pos": (1, 2)}, "task.state['pos'] is a tuple; it would come back as a list"),
    ({"a": {1: "x"}}, "task.state['a'] has the key 1 (int); keys must be strings"),
    ({"a": [0, float("nan")]}, "task.state['a'][1] is nan; JSON has no NaN or infinity"),
    ({"a": [float("inf")]}, "task.state['a'][0] is inf"),
    ({"s": {1, 2}}, "task.state['s'] is a set"),
    ({"b": b"raw"}, "task.state['b'] is a bytes"),
    ({"d": type("D", (dict,), {"__eq__": lambda a, b: False})()}, "task.state['d'] is a subclass of dict"),
])
def test_what_json_cannot_hold_exactly_is_refused_naming_the_key(state, message):
    with pytest.raises(StateError) as info:
        encode_state(state)
    assert str(info.value).startswith(message), str(info.value)
    if isinstance(state.get("conn"), socket.socket):
        state["conn"].close()


def test_a_cycle_and_deep_nesting_are_named():
    loop = {"a": []}
    loop["a"].append(loop)
    with pytest.raises(StateError, match=r"task.state\['a'\]\[0\] contains itself"):
        encode_state(loop)
    deep = inner = {}
    for _ in range(5000):
        inner["d"] = inner = {}
    with pytest.raises(StateError, match="is nested too deeply"):
        encode_state(deep)


def test_state_must_be_a_dict_and_not_too_large():
    with pytest.raises(StateError, match="task.state must be a dict, not list"):
        encode_state([1])
    with pytest.raises(StateError, match="more than the 16777216 allowed"):
        encode_state({"blob": "x" * MAX_STATE_BYTES})
