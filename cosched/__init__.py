"""cosched: Lua-style coroutines on trio, and a daemon that runs jobs as them.

``coro`` (and with it trio) is imported on first use, not here: coschedctl
imports this package and must start fast without the coroutine core.
"""

import importlib

__all__ = ["coro", "CoroutineError", "StepTimeout", "TaskInterrupted", "StateError"]
__version__ = "0.1.0"

_LAZY = {"coro": ("coro", None), "CoroutineError": ("coro", "CoroutineError"),
         "StepTimeout": ("guard", "StepTimeout"), "TaskInterrupted": ("guard", "TaskInterrupted"),
         "StateError": ("statejson", "StateError")}


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        mod = importlib.import_module(f"{__name__}.{module}")
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
