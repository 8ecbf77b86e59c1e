"""Permutations: a recursive generator that yields from deep inside its own calls.

Shows ``coro.wrap`` as an iterator whose body is recursive: ``permgen`` calls
itself with plain ``await`` and yields each permutation from the innermost
level, something a Python generator can only do with ``yield from`` at every
level. The order is that of the classic Lua ``permgen`` (b c a, c b a, ...).

Config (``[job.permutations] config = {...}``):
    items   list of items to permute (default ["a", "b", "c"])

Interact: nothing to do; each permutation is logged and the task finishes
with their number as its result. ``coschedctl start permutations`` runs it again.
"""

from cosched import coro


async def permgen(a, n):
    if n <= 1:
        # Yield a copy: the list keeps being permuted in place after we resume.
        await coro.yield_(list(a))
        return
    for i in range(n):
        a[n - 1], a[i] = a[i], a[n - 1]
        await permgen(a, n - 1)           # nested call; its yields reach our consumer
        a[n - 1], a[i] = a[i], a[n - 1]


def permutations(items):
    a = list(items)
    return coro.wrap(lambda: permgen(a, len(a)))


async def main(task):
    items = task.config.get("items", ["a", "b", "c"])
    count = 0
    async for p in permutations(items):
        count += 1
        task.log.info("permutation", perm=" ".join(map(str, p)), n=count)
    return count
