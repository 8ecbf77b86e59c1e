"""Where coschedd's control socket is: the rules, and a reader of the two keys behind them.

The socket's path follows from two config keys, ``daemon.runtime_dir`` and
``control.socket`` (each settable from the environment, ``cosched.envconfig``), the
config file's folder and a few environment variables. ``cosched.config`` builds the
daemon's configuration with the functions here, and coschedctl finds the socket with
``from_config``, which reads only those two keys: loading the whole configuration
(dataclasses, user and group look-ups, cron schedules, time zones) would cost
coschedctl more than the rest of a small command. One set of rules, so the daemon
and its clients cannot disagree on where the socket is.

Paths are strings here (pathlib is not needed to join two names); the config file
is read with the same trust check as the daemon's (``cosched.strictmodes``): a file
anyone could change could send coschedctl, and what it types, to another socket.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .envconfig import variable
from .strictmodes import read_trusted

__all__ = ["REPO_CONFIG", "SYSTEM_CONFIG", "SOCKET_NAME", "config_path", "resolve",
           "runtime_dir", "socket_path", "from_config"]

REPO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))),
                           "config", "coschedd.toml")
SYSTEM_CONFIG = "/etc/cosched/coschedd.toml"
SOCKET_NAME = "coschedd.sock"   # in the runtime folder, unless control.socket says otherwise


def config_path(environ: Mapping[str, str] = os.environ) -> str:
    """$COSCHED_CONFIG, else /etc/cosched/coschedd.toml if present, else the repo's copy."""
    if env := environ.get("COSCHED_CONFIG"):
        return env
    return SYSTEM_CONFIG if os.path.exists(SYSTEM_CONFIG) else REPO_CONFIG


def resolve(base: str | os.PathLike, path: str | os.PathLike) -> str:
    """``path`` relative to ``base``, with ".." normalised but symlinks kept as given."""
    return os.path.abspath(os.path.join(base, path))


def runtime_dir(value: str, base: str | os.PathLike, environ: Mapping[str, str]) -> str:
    """daemon.runtime_dir: the value, else $RUNTIME_DIRECTORY (systemd; the first of
    several), else $XDG_RUNTIME_DIR/cosched, else ../.run from the config's folder."""
    if value:
        return resolve(base, value)
    if systemd := environ.get("RUNTIME_DIRECTORY"):
        return resolve(base, systemd.split(":")[0])  # several RuntimeDirectory= are ":"-joined
    if xdg := environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(resolve(base, xdg), "cosched")
    return resolve(base, "../.run")


def socket_path(runtime: str, socket: str, base: str | os.PathLike) -> str:
    """control.socket relative to the config's folder, else the runtime folder's socket."""
    return resolve(base, socket) if socket else os.path.join(runtime, SOCKET_NAME)


def from_config(environ: Mapping[str, str] = os.environ, path: str | None = None) -> str:
    """The socket named by the config file (default: ``config_path``) and the
    environment. Raises OSError when the file cannot be read,
    ``strictmodes.Untrusted`` when it is not safe to trust, ValueError when it is not
    TOML or either key is not a string (coschedd would refuse that file too)."""
    path = os.path.abspath(config_path(environ) if path is None else path)
    try:  # only here: coschedctl --socket PATH never pays for it
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    raw, _, _ = read_trusted(path)
    data = tomllib.loads(raw.decode("utf-8"))
    value = {}
    for section, key in (("daemon", "runtime_dir"), ("control", "socket")):
        table = data.get(section, {})
        given = table.get(key, "") if isinstance(table, dict) else None
        given = environ.get(variable(section, key), given)  # a variable wins over the file
        if not isinstance(given, str):
            raise ValueError(f"{section}.{key}: expected a string")
        value[key] = given
    base = os.path.dirname(path)
    return socket_path(runtime_dir(value["runtime_dir"], base, environ), value["socket"], base)
