"""cosched: Lua-style coroutines on trio, and a daemon that runs jobs as them.

``coro`` (and with it trio) is imported on first use, not here: coschedctl
imports this package and must start fast without the coroutine core.
"""

import importlib

__all__ = ["coro", "CoroutineError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in __all__:
        coro = importlib.import_module(f"{__name__}.coro")  # also sets the attribute "coro"
        return coro if name == "coro" else coro.CoroutineError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
