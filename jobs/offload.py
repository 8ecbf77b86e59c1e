"""Offload: where blocking and CPU-bound work go, so the event loop never stalls.

A step (the code between two awaits) runs on the daemon's one event loop: while
it runs, nothing else does, and a step longer than ``step_limit`` is
interrupted with ``cosched.StepTimeout``. So:

- a call that *blocks* (reading a big file, a blocking client library,
  ``time.sleep``) goes to ``await task.run_sync(fn, *args)``: a worker thread;
- work that *computes* for long goes to ``await task.run_in_process(fn, *args)``:
  a worker process, in parallel with the daemon (functions defined in the job
  file are fine).

Killing the task ends both: the worker process is killed, the thread is
abandoned (it runs on until its call returns; the log says so).

Config: ``path`` (a file to hash; default this file), ``limit`` (primes below
it; default 200000).

Interact:
    coschedctl show offload      # finished; result: the digest and the prime count
"""

import hashlib


def sha256_of(path):
    # Blocking file I/O: fine in a worker thread.
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def count_primes(limit):
    # Pure computation: in a worker process it cannot hold up the daemon.
    sieve = bytearray([1]) * limit
    sieve[:2] = b"\0\0"
    for i in range(2, int(limit ** 0.5) + 1):
        if sieve[i]:
            sieve[i * i::i] = bytes(len(range(i * i, limit, i)))
    return sum(sieve)


async def main(task):
    digest = await task.run_sync(sha256_of, task.config.get("path", __file__))
    primes = await task.run_in_process(count_primes, task.config.get("limit", 200_000))
    task.log.info("offloaded work done", sha256=digest, primes=primes)
    return digest, primes
