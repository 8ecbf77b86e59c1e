"""Tests of cosched.log: the console renderer never passes control characters on."""

import io
import json
import logging

import structlog

from cosched import log as logsetup

EVIL = "x\x1b]0;pwned\x07\nFAKE\x9b31m"


class Odd:
    def __repr__(self):
        return "odd\x1b[2J"


class Broken:
    def __repr__(self):
        raise RuntimeError("no repr")


def render_console(**event):
    render = logsetup.safe_console(structlog.dev.ConsoleRenderer(colors=False))
    return render(None, "info", {"event": "happened", **event})


def test_console_renderer_escapes_keys_values_and_reprs():
    line = render_console(task=EVIL, value=Odd(), broken=Broken(), count=3, **{"k\x1b": "v"})
    assert "\x1b" not in line and "\x07" not in line and "\x9b" not in line
    assert "\n" not in line
    assert "task=x\\x1b]0;pwned\\x07\\nFAKE\\x9b31m" in line
    assert "value=odd\\x1b[2J" in line and "<unrepresentable Broken>" in line
    assert "count=3" in line and "k\\x1b=v" in line


def test_console_tracebacks_keep_their_lines():
    line = render_console(exception="Traceback:\n  line\x1b\nValueError: x")
    assert "Traceback:\n  line\\x1b\nValueError: x" in line


def test_setup_console_and_json_formats_are_both_safe():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        check_both_formats()
    finally:
        structlog.reset_defaults()
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


def check_both_formats():
    for fmt in ("console", "json"):
        stream = io.StringIO()
        logsetup.setup(fmt, "info", stream)
        structlog.get_logger("t").info("greeting", text=EVIL)
        out = stream.getvalue()
        assert "\x1b" not in out and "\x9b" not in out and out.count("\n") == 1, out
        if fmt == "json":
            assert json.loads(out)["text"] == EVIL  # exact, escaped by JSON itself


def test_a_call_below_the_level_makes_no_record_and_a_reload_changes_the_level():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    seen = []
    try:
        stream = io.StringIO()
        logsetup.setup("json", "warning", stream)
        logsetup.set_capture(seen.append)
        processed = []

        def counted(logger, method_name, event_dict):
            processed.append(method_name)
            return event_dict
        structlog.configure(processors=[counted, *structlog.get_config()["processors"]])
        log = structlog.get_logger("t").bind(task="t")
        log.info("hidden")
        log.debug("hidden")
        log.msg("hidden")
        assert processed == [] and seen == [] and stream.getvalue() == ""   # no record made
        log.warning("shown")
        log.warn("shown too")
        log.error("bad")
        logsetup.reconfigure("json", "debug")   # as a reload does: the same logger
        log.debug("now shown")
        log.info("and this")
        assert [e["event"] for e in seen] == ["shown", "shown too", "bad", "now shown",
                                              "and this"]
        assert processed == ["warning", "warning", "error", "debug", "info"]   # (warn is warning)
        assert [json.loads(line)["level"] for line in stream.getvalue().splitlines()] == [
            "warning", "warning", "error", "debug", "info"]
    finally:
        logsetup.set_capture(None)
        structlog.reset_defaults()
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
