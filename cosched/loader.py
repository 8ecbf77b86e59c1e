"""Job loading: a file in the jobs folder becomes a :class:`Job`, or a :class:`JobLoadError` with a reason.

A job is ``<name>.py`` exposing ``async def main(task)``. Loading runs the file's
top level in a fresh module object (never ``sys.modules``: two versions of one
job may live side by side while the old one's tasks wind down).

Whoever can change a job file, or a folder on the way to it, could run code as
the daemon. So each load opens the file, checks it and the path to it with
``cosched.strictmodes`` (owned by root or the daemon's user, writable by no one
else) and compiles exactly the bytes read from the checked descriptor; a file
that fails is refused before any of it runs. ``strict_modes = false`` in the
config (development only) turns a refusal into a logged warning.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import structlog

from .strictmodes import Untrusted, read_trusted

__all__ = ["Job", "JobLoadError", "load_job", "job_files", "signature", "set_strict_modes"]

log = structlog.get_logger("cosched.loader")

# The config's daemon.strict_modes, set once at start-up (set_strict_modes). Only
# False, for development, lets an unsafe job file load, with a warning each time.
_strict_modes = True


def set_strict_modes(strict: bool) -> None:
    global _strict_modes
    _strict_modes = strict


class JobLoadError(Exception):
    """A job file that cannot become a job; the message says why, for operators."""


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    path: Path
    main: Callable[..., Any]
    module: ModuleType
    signature: tuple   # what identifies this version of the file (see signature())


def signature(st: os.stat_result) -> tuple:
    """Changes whenever the file's content, permissions or owner may have changed
    (a file refused for its owner is tried again once it is chowned)."""
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode, st.st_uid, st.st_gid)


def job_files(folder: Path) -> dict[str, Path]:
    """The job files in ``folder`` by job name (editor temp files and dotfiles skipped)."""
    found = {}
    for p in sorted(folder.glob("*.py")):
        if not p.name.startswith((".", "_")) and p.is_file():
            found[p.stem] = p
    return found


def load_job(path: Path) -> Job:
    """Load the job in ``path``; raises JobLoadError naming the reason."""
    try:
        source, st, problem = read_trusted(path, strict=_strict_modes)
    except Untrusted as e:
        raise JobLoadError(f"{e}; refusing to run it") from None
    except OSError as e:
        raise JobLoadError(f"cannot read {path.name}: {e.strerror}") from None
    if problem is not None:
        log.warning("strict_modes is off: loading an unsafe job file", job=path.stem,
                    path=str(path), reason=str(problem))
    try:
        code = compile(source, str(path), "exec")
    except SyntaxError as e:
        raise JobLoadError(f"syntax error at line {e.lineno}: {e.msg}") from None
    except ValueError as e:  # e.g. a NUL byte in the source
        raise JobLoadError(f"cannot compile {path.name}: {e}") from None
    module = _new_module(path)
    try:
        exec(code, module.__dict__)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - a job's top level must never take the daemon down
        where = traceback.extract_tb(e.__traceback__)[-1]
        raise JobLoadError(
            f"{type(e).__name__} while loading, at line {where.lineno}: {e}") from None
    main = module.__dict__.get("main")
    if main is None:
        raise JobLoadError("defines no main(task); a job needs `async def main(task)`")
    if not inspect.iscoroutinefunction(main):
        raise JobLoadError(
            f"main is not an async function (it is {type(main).__name__}); "
            "a job needs `async def main(task)`")
    return Job(path.stem, path, main, module, signature(st))


def _new_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"cosched.jobs.{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(path)
    return module
