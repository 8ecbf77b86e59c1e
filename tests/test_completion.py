"""Shell completion of coschedctl: the shipped scripts, run by a real bash against a real daemon.

completions/coschedctl.bash and completions/_coschedctl are argcomplete's
scripts (`make completions`); the test checks they are current and drives the
bash one as bash would on <Tab>: COMP_LINE/COMP_POINT/COMP_WORDS set, the
completion function called, COMPREPLY read. Task and job names come live from
the daemon.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_daemon import ASKER, SLEEPER, daemon  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCRIPTS = {"coschedctl.bash": [], "_coschedctl": ["--shell", "zsh"]}
DRIVER = r"""
source "$1"
COMP_LINE="$2"; COMP_POINT=${#COMP_LINE}
read -ra COMP_WORDS <<< "$COMP_LINE"
[[ "$COMP_LINE" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
_python_argcomplete coschedctl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_shipped_scripts_are_current(name):
    proc = subprocess.run([str(BIN / "register-python-argcomplete"), *SCRIPTS[name],
                           "coschedctl"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (REPO / "completions" / name).read_text() == proc.stdout, \
        f"completions/{name} is out of date: run `make completions`"


def complete(line: str) -> list[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-c", DRIVER, "bash", str(REPO / "completions" /
                                                              "coschedctl.bash"), line],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    return [w.strip() for w in proc.stdout.splitlines() if w.strip()]


def test_commands_and_options_complete():
    assert complete("coschedctl s") == ["status", "show", "start"]
    assert complete("coschedctl re") == ["resume", "restart", "reload"]
    assert complete("coschedctl --so") == ["--socket"]
    assert complete("coschedctl status --st") == ["--state"]
    assert set(complete("coschedctl status --state f")) == {"finished", "failed"}


def test_task_and_job_names_come_from_the_daemon(daemon):
    d = daemon(jobs={"sleeper": SLEEPER, "asker": ASKER})
    d.wait_task("asker", lambda t: t["state"] == "suspended", "suspended")
    ids = sorted(str(t["id"]) for t in d.status()["tasks"])
    assert set(complete(f"coschedctl --socket {d.socket} show ")) == {"sleeper", "asker", *ids}
    assert complete(f"coschedctl --socket {d.socket} resume as") == ["asker"]
    assert complete(f"coschedctl --socket {d.socket} start sl") == ["sleeper"]
    assert complete(f"coschedctl --socket {d.socket} status --job a") == ["asker"]


def test_no_daemon_means_no_names_and_no_error(tmp_path):
    assert complete(f"coschedctl --socket {tmp_path}/none.sock show ") == []


@pytest.mark.skipif(not shutil.which("zsh"), reason="zsh is not installed")
def test_the_zsh_script_loads_in_zsh():
    proc = subprocess.run(["zsh", "-c", "autoload -U compinit && compinit -u && source "
                           f"{REPO / 'completions' / '_coschedctl'} && echo loaded"],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().endswith("loaded"), proc.stderr
