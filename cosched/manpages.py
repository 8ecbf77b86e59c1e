"""Man pages generated from what they describe, so they cannot drift from it.

- coschedctl(1) from coschedctl's argument parser and command table
  (``cosched.ctl``), with the help of each command from ``cosched.protocol``;
- coschedd(8) from coschedd's argument parser and module docstring;
- coschedd.toml(5) from the config schema (``cosched.config.SCHEMA``), with the
  environment variable of each key (``cosched.envconfig``).

``python -m cosched.manpages DIR`` writes ``DIR/man1/coschedctl.1``,
``DIR/man8/coschedd.8`` and ``DIR/man5/coschedd.toml.5`` (``make man``); a
test checks that the files in ``man/`` are what this module generates now.
The output is plain man(7) roff, with no date, so it is reproducible.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from . import __version__

__all__ = ["PAGES", "render_all", "write_all"]


def esc(text: str) -> str:
    """Text for roff: backslashes and hyphens escaped, no line may start with a dot."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line
                     for line in out.split("\n"))


def _header(name: str, section: int, title: str) -> list[str]:
    return [f'.TH {name.upper()} {section} "" "cosched {__version__}" "{title}"',
            ".SH NAME", f"{esc(name)} \\- {esc(_first_line(name))}"]


def _first_line(name: str) -> str:
    return {"coschedctl": "control a running coschedd, locally or over SSH",
            "coschedd": "run a folder of job scripts as supervised coroutines",
            "coschedd.toml": "configuration of coschedd"}[name]


def _paragraphs(text: str) -> list[str]:
    out = []
    for para in textwrap.dedent(text).strip().split("\n\n"):
        out += [".PP", esc(" ".join(line.strip() for line in para.splitlines()))]
    return out


def _option(action: argparse.Action) -> list[str]:
    flags = ", ".join(f"\\fB{esc(o)}\\fR" for o in action.option_strings)
    if action.nargs != 0:
        metavar = action.metavar or (("{" + ",".join(action.choices) + "}") if action.choices
                                     else action.dest.upper())
        flags += f" \\fI{esc(str(metavar))}\\fR"
    return [".TP", flags, esc(action.help or "")]


# -- coschedctl(1) -----------------------------------------------------------------

def coschedctl() -> str:
    from . import ctl
    parser = ctl.build_parser()
    doc = ctl.__doc__ or ""
    lines = _header("coschedctl", 1, "User Commands")
    lines += [".SH SYNOPSIS", f"\\fBcoschedctl\\fR {esc(ctl.USAGE.removeprefix('coschedctl '))}",
              ".SH DESCRIPTION", *_paragraphs(doc.split("\n\n")[1]),
              *_paragraphs("TASK is a task id (a number) or a task name. status, show, jobs, "
                           "logs, events, tree, top, ping and metrics need read access to "
                           "the daemon's socket; resume, kill, start, restart and reload "
                           "need control access (see coschedd.toml(5), [control])."),
              ".SH COMMANDS"]
    for cmd in ctl.COMMANDS:
        usage = " ".join(_arg_usage(name, kwargs) for name, kwargs in cmd.args)
        lines += [".TP", f"\\fB{cmd.name}\\fR {esc(usage)}".rstrip(),
                  esc(cmd.help)]
    lines += [".SH OPTIONS", *_paragraphs("Options may come before or after the command.")]
    for action in parser._actions:
        if action.option_strings:
            lines += _option(action)
    lines += [".SH EXIT STATUS", ".TP", "0", "done", ".TP", "1",
              "the daemon refused the request; \\(lqcoschedctl: CODE: MESSAGE\\(rq is printed",
              ".TP", "2", "usage error", ".TP", "3",
              "the daemon cannot be reached (with \\fB\\-H\\fR also: the host, by ssh, "
              "or coschedctl on it)",
              ".SH ENVIRONMENT",
              ".TP", "\\fBCOSCHED_SOCKET\\fR", "the daemon's socket, when --socket is not given",
              ".TP", "\\fBCOSCHED_CONFIG\\fR",
              "the configuration file whose control.socket is the default socket",
              ".TP", "\\fBCOSCHED_SSH\\fR",
              esc("the ssh command for -H (default \"ssh\"), split like a shell would"),
              ".TP", "\\fBCOSCHED_REMOTE_COSCHEDCTL\\fR",
              esc("the command run on the remote host (default \"coschedctl\")"),
              ".SH NOTES", *_paragraphs(
                  "Text from the daemon (task and file names, values, errors) is printed "
                  "with control characters escaped; --json prints exact JSON. Bash and zsh "
                  "completion: see the completions folder of the source, or run "
                  "register-python-argcomplete coschedctl."),
              ".SH SEE ALSO", "\\fBcoschedd\\fR(8), \\fBcoschedd.toml\\fR(5), \\fBssh\\fR(1)"]
    return "\n".join(lines) + "\n"


def _arg_usage(name: str, kwargs: dict) -> str:
    """How one argument of a coschedctl command is written in a synopsis."""
    if name.startswith("-"):
        if kwargs.get("action") == "store_true":
            return f"[{name}]"
        return f"[{name} {kwargs['metavar']}]"
    metavar = kwargs.get("metavar", name.upper())
    return {"?": f"[{metavar}]", "*": f"[{metavar}...]"}.get(kwargs.get("nargs", ""), metavar)


# -- coschedd(8) -------------------------------------------------------------------

def coschedd() -> str:
    from . import daemon
    parser = daemon.build_parser()
    parts = (daemon.__doc__ or "").split("\n\n")
    usage = " ".join(parser.format_usage().split()[1:])
    lines = _header("coschedd", 8, "System Administration")
    lines += [".SH SYNOPSIS", f"\\fBcoschedd\\fR {esc(usage.removeprefix('coschedd '))}",
              ".SH DESCRIPTION", *_paragraphs(parts[0].split(": ", 1)[1])]
    for para in parts[2:]:
        lines += _paragraphs(para)
    lines += [".SH OPTIONS"]
    for action in parser._actions:
        if action.option_strings:
            lines += _option(action)
    lines += [".SH FILES", ".TP", "\\fI/etc/cosched/coschedd.toml\\fR",
              "the configuration (see \\fBcoschedd.toml\\fR(5))",
              ".TP", "\\fI/run/cosched/coschedd.sock\\fR", "the control socket under systemd",
              ".SH SEE ALSO", "\\fBcoschedctl\\fR(1), \\fBcoschedd.toml\\fR(5), "
              "\\fBsystemd.socket\\fR(5), \\fBsd_listen_fds\\fR(3)"]
    return "\n".join(lines) + "\n"


# -- coschedd.toml(5) --------------------------------------------------------------

def coschedd_toml() -> str:
    from .config import ALIASES, JOB_KEYS, SCHEMA, _toml
    from .envconfig import variable
    lines = _header("coschedd.toml", 5, "File Formats")
    lines += [".SH SYNOPSIS", "\\fI/etc/cosched/coschedd.toml\\fR",
              ".SH DESCRIPTION", *_paragraphs(
                  "The configuration of coschedd(8), in TOML. Every key is optional; an "
                  "unknown key or a value of the wrong type stops coschedd at start with a "
                  "message naming the key (exit status 2). Relative paths are relative to "
                  "the folder of the file. The file must be owned by root or the daemon's "
                  "user and writable by no one else.\n\n"
                  "Each key can also be set in the environment as COSCHED_<SECTION>_<KEY> "
                  "(given below for each key); a variable wins over the file, and a "
                  "command-line option of coschedd over both. Switches take true or false "
                  "(also 1/0, yes/no, on/off), lists comma-separated items.")]
    for section, keys in SCHEMA.items():
        lines += [".SH", f"[{section}]"]
        for name, key in keys.items():
            lines += [".TP", f"\\fB{esc(name)}\\fR = {esc(_toml(key.default))}",
                      esc(key.doc), ".br",
                      esc(f"Expected: {key.expect}. Environment: {variable(section, name)}.")]
        for old, new in ALIASES.get(section, {}).items():
            lines += [".TP", f"\\fB{esc(old)}\\fR", esc(f"The old name of {new}, still read.")]
    lines += [".SH [job.NAME]", *_paragraphs(
        "One table per job, named after its file (jobs/NAME.py): any key of [jobs], "
        "for this job only, and:")]
    for name, key in JOB_KEYS.items():
        if name not in SCHEMA["jobs"]:
            lines += [".TP", f"\\fB{esc(name)}\\fR = {esc(_toml(key.default))}", esc(key.doc)]
    lines += [".SH SEE ALSO", "\\fBcoschedd\\fR(8), \\fBcoschedctl\\fR(1)"]
    return "\n".join(lines) + "\n"


PAGES = {"man1/coschedctl.1": coschedctl, "man8/coschedd.8": coschedd,
         "man5/coschedd.toml.5": coschedd_toml}


def render_all() -> dict[str, str]:
    return {path: render() for path, render in PAGES.items()}


def write_all(folder: Path) -> None:
    for path, text in render_all().items():
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


if __name__ == "__main__":
    write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "man"))
