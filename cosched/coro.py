"""Lua 5.4 coroutines plus symmetric transfer, as awaitables on trio.

This is the public face of the coroutine core; the contract it keeps is stated
in full in the README's coroutine guide. In short::

    co = coro.create(body)              # nothing runs yet; status "suspended"
    ok, *vals = await coro.resume(co, 1, 2)
    vals = await coro.yield_(x, y)      # inside a coroutine: back to the resumer
    vals = await coro.transfer(other)   # symmetric: hand control to any coroutine
    gen = coro.wrap(body)               # await gen(...) / async for v in gen
    sw = coro.safewrap(lambda yield_, *a: ...)   # cross-yield from nested coroutines
    await coro.close(co)                # run a suspended coroutine's cleanup

Every trio operation may be awaited inside a coroutine at any depth: it
suspends only that chain and never reaches the resumer.
"""

from ._coro import (
    Coroutine,
    CoroutineError,
    SafeWrapped,
    Wrapped,
    close,
    create,
    current,
    isyieldable,
    main,
    resume,
    running,
    safewrap,
    status,
    transfer,
    wrap,
    yield_,
)

__all__ = [
    "Coroutine", "CoroutineError", "SafeWrapped", "Wrapped", "close", "create",
    "current", "isyieldable", "main", "resume", "running", "safewrap", "status",
    "transfer", "wrap", "yield_",
]
