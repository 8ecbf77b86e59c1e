"""Configuration from the environment: ``COSCHED_<SECTION>_<KEY>=value``.

Containers and Kubernetes configure programs through their environment, so
every key of the config file can also be set by a variable named for its
section and key in capitals: ``COSCHED_LOG_FORMAT=json`` is ``[log] format =
"json"``, ``COSCHED_METRICS_LISTEN=0.0.0.0:9469`` is ``[metrics] listen``. A
variable wins over the file (which is still read and checked); command-line
options win over both. ``[job.<name>]`` tables have no variables: job names
may hold characters that variable names cannot.

Values are read as the key's type: numbers as numbers, ``true``/``false`` (also
``1``/``0``, ``yes``/``no``, ``on``/``off``) for switches, comma-separated items for
lists (``COSCHED_CONTROL_READ_USERS=alice,1001``), anything else as a string.
A value that does not fit is an error naming the variable, like a bad key in
the file. A ``COSCHED_`` variable that names no section is reported (a typo
would otherwise be ignored silently), unless it is one of the other variables
cosched reads (``OTHER_VARIABLES``).

This module only reads; ``cosched.config.load_config`` merges what it returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["PREFIX", "OTHER_VARIABLES", "EnvError", "overrides", "variable"]

PREFIX = "COSCHED_"
# Variables of cosched that are not config keys.
OTHER_VARIABLES = frozenset({"COSCHED_CONFIG", "COSCHED_SOCKET", "COSCHED_PURE_PYTHON",
                             "COSCHED_SSH", "COSCHED_REMOTE_COSCHEDCTL"})
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


class EnvError(ValueError):
    """A COSCHED_* variable with a value its key cannot take; the message names it."""


def variable(section: str, key: str) -> str:
    return f"{PREFIX}{section.upper()}_{key.upper()}"


def overrides(schema: Mapping[str, Mapping[str, Any]], environ: Mapping[str, str]
              ) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """({section: {key: value}} from the environment, notes about unknown variables).
    Values are converted to the key's type (see the module docstring); the caller
    validates them like values from the file. Raises EnvError."""
    names = {variable(section, key): (section, key)
             for section, keys in schema.items() for key in keys}
    out: dict[str, dict[str, Any]] = {}
    notes = []
    for name, text in sorted(environ.items()):
        if not name.startswith(PREFIX) or name in OTHER_VARIABLES:
            continue
        if name not in names:
            notes.append(_unknown(name, schema))
            continue
        section, key = names[name]
        out.setdefault(section, {})[key] = _parse(name, text, schema[section][key])
    return out, notes


def _unknown(name: str, schema: Mapping[str, Mapping[str, Any]]) -> str:
    section = next((s for s in schema if name.startswith(f"{PREFIX}{s.upper()}_")), None)
    if section is None:
        return (f"{name} is not a cosched variable (config keys are COSCHED_<SECTION>_<KEY> "
                f"with SECTION one of {', '.join(s.upper() for s in schema)}); ignored")
    keys = ", ".join(variable(section, k) for k in schema[section])
    return f"{name}: [{section}] has no such key (it has {keys}); ignored"


def _parse(name: str, text: str, key: Any) -> Any:
    """``text`` as a value of the type of ``key.default``."""
    default = key.default
    try:
        if isinstance(default, bool):
            word = text.strip().lower()
            if word not in _TRUE | _FALSE:
                raise ValueError
            return word in _TRUE
        if isinstance(default, int):
            return int(text.strip())
        if isinstance(default, float):
            return float(text.strip())
        if isinstance(default, list):
            items = [item.strip() for item in text.split(",") if item.strip()]
            return [int(i) if i.isascii() and i.isdigit() else i for i in items]
    except ValueError:
        raise EnvError(f"{name}={text!r}: expected {key.expect}") from None
    return text
