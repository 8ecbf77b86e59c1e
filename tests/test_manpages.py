"""The man pages in man/ are what cosched.manpages generates now, and render cleanly."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cosched import ctl, daemon, manpages
from cosched.config import SCHEMA
from cosched.envconfig import variable

MAN = Path(__file__).resolve().parent.parent / "man"


@pytest.mark.parametrize("path", sorted(manpages.PAGES))
def test_checked_in_pages_are_current(path):
    assert (MAN / path).read_text() == manpages.PAGES[path](), \
        f"man/{path} is out of date: run `make man`"


def test_every_option_command_and_key_is_documented():
    pages = manpages.render_all()
    for action in ctl.build_parser()._actions:
        for flag in action.option_strings:
            assert manpages.esc(flag) in pages["man1/coschedctl.1"], flag
    for cmd in ctl.COMMANDS:
        assert f"\\fB{cmd.name}\\fR" in pages["man1/coschedctl.1"], cmd.name
    for action in daemon.build_parser()._actions:
        for flag in action.option_strings:
            assert manpages.esc(flag) in pages["man8/coschedd.8"], flag
    for section, keys in SCHEMA.items():
        assert f"[{section}]" in pages["man5/coschedd.toml.5"]
        for key in keys:
            assert f"\\fB{manpages.esc(key)}\\fR" in pages["man5/coschedd.toml.5"], key
            assert manpages.esc(variable(section, key)) in pages["man5/coschedd.toml.5"]


def test_roff_escaping():
    assert manpages.esc("a-b \\n") == "a\\-b \\en"
    assert manpages.esc(".x\n'y\nz") == "\\&.x\n\\&'y\nz"


@pytest.mark.skipif(not shutil.which("groff"), reason="groff is not installed")
@pytest.mark.parametrize("path", sorted(manpages.PAGES))
def test_pages_render_without_warnings(path):
    proc = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(MAN / path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
