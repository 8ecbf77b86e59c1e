"""What a worker process runs for ``task.run_in_process``: kept tiny, so a worker
imports cloudpickle and nothing of the daemon."""

from __future__ import annotations

import cloudpickle


def call(payload: bytes) -> tuple[bool, bytes]:
    """Unpickle (fn, args), call it; (True, pickled result) or (False, pickled exception)."""
    fn, args = cloudpickle.loads(payload)
    try:
        return True, cloudpickle.dumps(fn(*args))
    except Exception as exc:  # noqa: BLE001 - handed back to the task that asked
        try:
            return False, cloudpickle.dumps(exc)
        except Exception:  # noqa: BLE001 - an exception that does not pickle
            return False, cloudpickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))
