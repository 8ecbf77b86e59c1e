"""Ask: a job that asks the operator questions by yielding to the daemon.

Shows the root coroutine yielding values to its resumer, the daemon: the task
is *suspended* showing the question until an operator answers with
``coschedctl resume``, and the answer is what ``coro.yield_`` returns.

Config: none.

Interact:
    coschedctl show ask             # suspended: "What is your name?"
    coschedctl resume ask Alice     # greets Alice, then asks "Another? (yes/no)"
    coschedctl resume ask yes       # asks for another name; anything else ends it
The task finishes with the list of names as its result.
"""

from cosched import coro


def text(answer):
    # No value -> None, several values -> a tuple: make one string of either.
    if answer is None:
        return ""
    if isinstance(answer, tuple):
        return " ".join(map(str, answer))
    return str(answer)


async def main(task):
    names = []
    while True:
        name = text(await coro.yield_("What is your name?")).strip()
        if not name:
            continue          # an empty answer is no name: ask again
        names.append(name)
        task.log.info("greeting", greeting=f"Hello, {name}!", name=name)
        again = text(await coro.yield_("Another? (yes/no)")).strip().lower()
        if again != "yes":
            break
    task.log.info("done", names=names)
    return names
