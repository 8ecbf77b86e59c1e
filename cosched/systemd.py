"""sd_notify(3) client that lets coschedd report to systemd.

This module holds :class:`Notifier`. It tells the service manager what state
the daemon is in, and a trio task in it sends the watchdog keep-alive pings.
It uses only the standard library and trio. It does not need libsystemd or
python-systemd.

The protocol
------------
systemd passes the path of its notification socket in ``$NOTIFY_SOCKET``. The
path is either a filesystem path (``/run/systemd/notify``) or, when it starts
with ``@``, a name in the Linux abstract socket namespace. There the ``@``
stands for a leading NUL byte. Each notification is a single datagram sent to
that ``AF_UNIX``/``SOCK_DGRAM`` socket. It holds ``KEY=VALUE`` assignments in
UTF-8, one per line, e.g. ``READY=1\\nSTATUS=3 tasks``. This module uses
these assignments:

``READY=1``
    Start-up has finished, or a reload has finished.
``RELOADING=1`` + ``MONOTONIC_USEC=<usec>``
    A configuration reload began. The time is read from ``CLOCK_MONOTONIC``.
``STOPPING=1``
    Shutdown began.
``STATUS=<text>``
    A one-line status that ``systemctl status`` shows.
``WATCHDOG=1``
    A keep-alive ping. systemd exports ``WatchdogSec=`` as
    ``$WATCHDOG_USEC``. If that much time passes without a ping, systemd
    treats the service as hung. ``$WATCHDOG_PID`` (optional) names the
    process that must send the pings.

Without ``$NOTIFY_SOCKET`` (the daemon was not started by systemd, or the unit
is not ``Type=notify``) a :class:`Notifier` is inert: each method does nothing
and returns False. Sending errors are logged at debug level and never raised.
Status reporting must never take the daemon down.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

import trio

__all__ = ["Notifier"]

_log = logging.getLogger(__name__)


def _socket_address(value: str) -> bytes | None:
    """Map a ``$NOTIFY_SOCKET`` value to an AF_UNIX address, or None."""
    if value.startswith("@"):
        # systemd writes the abstract namespace's leading NUL byte as '@'.
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return os.fsencode(value)
    # Relative paths are invalid. "vsock:" addresses (VM guests) are not
    # spoken here.
    return None


def _positive_int(value: str | None) -> int | None:
    """Parse a positive decimal integer; None for anything else."""
    try:
        number = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _encode(fields: Mapping[str, object]) -> bytes:
    """Render fields as the newline-separated KEY=VALUE datagram body."""
    lines = []
    for key, value in fields.items():
        if not key or "=" in key or "\n" in key:
            raise ValueError(f"invalid sd_notify field name {key!r}")
        if isinstance(value, bool):
            value = int(value)  # systemd expects READY=1, not READY=True
        # The protocol is line-based. A newline inside a value would start a
        # new assignment, so STATUS="x\nREADY=1" could fake readiness.
        text = str(value).replace("\n", " ")
        lines.append(f"{key}={text}")
    return "\n".join(lines).encode("utf-8")


class Notifier:
    """sd_notify(3) client.

    It is inert (each method does nothing and returns False) when
    NOTIFY_SOCKET is unset.

    The socket is opened on first use and reused. It is non-blocking, so a
    slow or stuck service manager can never stall the trio event loop. A full
    receive queue counts as a failed send.
    """

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        raw = environ.get("NOTIFY_SOCKET", "")
        self._address = _socket_address(raw) if raw else None
        if raw and self._address is None:
            _log.debug("ignoring unsupported NOTIFY_SOCKET=%r", raw)
        self._watchdog_usec = _positive_int(environ.get("WATCHDOG_USEC"))
        # Keep the raw text: a WATCHDOG_PID that is set but not a valid PID
        # disables the watchdog, as in sd_watchdog_enabled(3).
        self._watchdog_pid = environ.get("WATCHDOG_PID")
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """True when systemd asked for notifications and we have not closed."""
        return self._address is not None

    def notify(self, **fields: object) -> bool:
        """Send all fields in one datagram. Returns True if it was sent."""
        if self._address is None or not fields:
            return False
        try:
            self._socket().sendto(_encode(fields), self._address)
        except Exception as exc:  # never let status reporting raise
            _log.debug("sd_notify %s failed: %r", sorted(fields), exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """Report that start-up (or a reload) has finished."""
        if status:
            return self.notify(READY=1, STATUS=status)
        return self.notify(READY=1)

    def reloading(self) -> bool:
        """Report that a reload began. Call ready() once it is done."""
        # sd_notify(3) requires MONOTONIC_USEC with RELOADING=1. Under
        # Type=notify-reload, systemd uses the timestamp to tell this reload
        # from an earlier one.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(RELOADING=1, MONOTONIC_USEC=usec)

    def stopping(self) -> bool:
        """Report that shutdown began."""
        return self.notify(STOPPING=1)

    def status(self, text: str) -> bool:
        """Set the one-line status that ``systemctl status`` shows."""
        return self.notify(STATUS=text)

    def watchdog_interval(self) -> float | None:
        """Return the seconds between watchdog pings.

        Returns None if no watchdog was requested, or if the watchdog belongs
        to another process.
        """
        if self._address is None or self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None:
            # Check at call time, so a forked child does not ping for its
            # parent.
            if _positive_int(self._watchdog_pid) != os.getpid():
                return None
        # Ping at half the deadline, as sd_watchdog_enabled(3) advises, so one
        # late wake-up does not get the service killed.
        return self._watchdog_usec / 2 / 1e6

    async def watchdog_loop(self) -> None:
        """Send WATCHDOG=1 every watchdog_interval() seconds, forever.

        Returns at once when no watchdog is requested. Run it in the daemon's
        nursery. The pings come from the event loop on purpose: if a job hogs
        the loop, the pings stop and systemd restarts the hung daemon.
        """
        interval = self.watchdog_interval()
        if interval is None:
            return
        while True:
            self.notify(WATCHDOG=1)
            await trio.sleep(interval)

    def close(self) -> None:
        """Close the socket. Afterwards the notifier is inert."""
        self._address = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _socket(self) -> socket.socket:
        # One unconnected socket for the notifier's lifetime. sendto() names
        # the target every time, so a socket that appears later still works.
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            self._sock = sock
        return self._sock
