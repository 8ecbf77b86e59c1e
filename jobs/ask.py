"""Ask: a job that asks the operator questions by yielding to the daemon.

Shows the root coroutine yielding values to its resumer, the daemon: the task
is *suspended* showing the question until an operator answers with
``coschedctl resume``, and the answer is what ``coro.yield_`` returns.

Also shows how a job survives a restart of the daemon. A coroutine's frames
cannot be saved, so after a restart (or a stop that interrupted the task) a new
task begins again at ``main``. What it needs to pick up is in ``task.state``:
the names so far and which question was open. The daemon saves the state each
time the task suspends (so the open question is on disk while it waits), and
``await task.checkpoint()`` saves it at once; the new task starts with the
saved state (``task.restored`` is true) and asks the open question again.

Config: none.

Interact:
    coschedctl show ask             # suspended: "What is your name?"
    coschedctl resume ask Alice     # greets Alice, then asks "Another? (yes/no)"
    coschedctl resume ask yes       # asks for another name; anything else ends it
The task finishes with the list of names as its result, and clears its state
so that the next task starts a new round.
"""

from cosched import coro

NAME = "What is your name?"
AGAIN = "Another? (yes/no)"


def text(answer):
    # No value -> None, several values -> a tuple: make one string of either.
    if answer is None:
        return ""
    if isinstance(answer, tuple):
        return " ".join(map(str, answer))
    return str(answer)


async def main(task):
    state = task.state
    names = state.setdefault("names", [])
    if task.restored and state.get("asking"):
        task.log.info("asking again after a restart", names=names, asking=state["asking"])
    while True:
        if state.get("asking") != "again":
            state["asking"] = "name"      # saved when the task suspends on the question
            name = text(await coro.yield_(NAME)).strip()
            if not name:
                continue          # an empty answer is no name: ask again
            names.append(name)
            state["asking"] = "again"
            await task.checkpoint()   # the name is on disk before it is greeted
            task.log.info("greeting", greeting=f"Hello, {name}!", name=name)
        again = text(await coro.yield_(AGAIN)).strip().lower()
        if again != "yes":
            break
        state["asking"] = "name"
    task.log.info("done", names=names)
    state.clear()   # ended: the next task starts a new round
    return names
