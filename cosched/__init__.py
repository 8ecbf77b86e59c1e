"""cosched: Lua-style coroutines on trio, and a daemon that runs jobs as them."""

from . import coro
from .coro import CoroutineError

__all__ = ["coro", "CoroutineError"]
__version__ = "0.1.0"
