"""Watch the jobs folder for added, changed, removed or renamed job files.

Design: Linux inotify through ctypes, with no polling and no threads.  The
inotify descriptor is opened non-blocking and the task sleeps in
``trio.lowlevel.wait_readable`` (epoll inside trio), so an idle watcher costs
nothing and wakes exactly when the kernel has queued events.  After each
wake-up everything readable is drained with ``os.read`` and the events are
coalesced into one batch: per path the last kind wins and the order of first
appearance is kept, so an editor's CREATE, MODIFY..., CLOSE_WRITE becomes a
single "changed".  A plain IN_CREATE is not a change (the file is still being
written; IN_CLOSE_WRITE follows) unless it made a symlink or a hard link,
which never get a CLOSE_WRITE.  IN_ATTRIB counts as a change because the
daemon re-checks permissions on chmod.  Names not ending in the suffix, or
starting with '.' or ending in '~' (editor temp files), are ignored.

A queue overflow yields a "rescan" change.  If the folder itself is deleted,
moved or unmounted, the batch carries a "rescan" and ``changes()`` ends: the
caller should rescan and create a new watcher once the folder is back;
``wait_for_folder`` waits for that (or for a folder that did not exist yet)
with inotify on the nearest folder above it that exists, again without polling.

A Kubernetes ConfigMap (or Secret) mounted as the folder updates all its files
at once by pointing the symlink ``..data`` at a new timestamped folder: the
visible names are symlinks through ``..data`` and never change themselves. So
the creation or renaming of ``..data`` yields a "rescan" (the daemon then sees
the new files' content through the same names).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import trio

__all__ = ["Change", "DirWatcher", "WatchError"]

IN_ATTRIB, IN_CLOSE_WRITE = 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_UNMOUNT = 0x400, 0x800, 0x2000
IN_Q_OVERFLOW, IN_IGNORED = 0x4000, 0x8000
IN_ONLYDIR, IN_ISDIR = 0x01000000, 0x40000000
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
MASK = (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_CREATE
        | IN_DELETE_SELF | IN_MOVE_SELF | IN_ATTRIB)
CHANGED = IN_CLOSE_WRITE | IN_MOVED_TO | IN_ATTRIB
REMOVED = IN_DELETE | IN_MOVED_FROM
GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
_BUFSIZE = 64 * 1024
ATOMIC_SWAP = "..data"  # the symlink a ConfigMap volume swaps to update every file at once
APPEAR = IN_CREATE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF | IN_MOVE_SELF


class WatchError(OSError):
    """The folder cannot be watched (missing, not a folder, no inotify)."""


@dataclass(frozen=True, slots=True)
class Change:
    kind: str  # "changed", "removed" or "rescan"
    path: Path | None  # absolute path of the file; None for "rescan"


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


class DirWatcher:
    def __init__(self, folder: Path, suffix: str = ".py") -> None:
        self.folder = Path(os.path.abspath(folder))
        self.suffix = suffix
        self._fd: int | None = None
        self._wd = -1
        try:
            self._libc = _libc()
            fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        except (OSError, AttributeError) as exc:
            raise WatchError(errno.ENOSYS, f"inotify is unavailable: {exc}") from exc
        if fd < 0:
            err = ctypes.get_errno()
            raise WatchError(err, f"inotify is unavailable: {os.strerror(err)}")
        self._fd = fd
        wd = self._libc.inotify_add_watch(fd, os.fsencode(self.folder), MASK | IN_ONLYDIR)
        if wd < 0:
            err = ctypes.get_errno()
            self.close()
            raise WatchError(err, f"cannot watch folder {self.folder}: {os.strerror(err)}",
                             str(self.folder))
        self._wd = wd

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            trio.lowlevel.notify_closing(fd)  # wakes a task waiting in changes()
        except RuntimeError:
            pass  # not inside trio: nobody can be waiting
        os.close(fd)  # also drops the watch

    def __enter__(self) -> DirWatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def changes(self) -> AsyncIterator[list[Change]]:
        """Yield coalesced batches of changes until closed or the folder goes."""
        while self._fd is not None:
            try:
                await trio.lowlevel.wait_readable(self._fd)
            except trio.ClosedResourceError:
                return
            if self._fd is None:
                return
            batch: dict[Path | None, str] = {}
            gone = self._drain(batch)
            if batch:
                yield [Change(kind, path) for path, kind in batch.items()]
            if gone:
                return

    def _drain(self, batch: dict[Path | None, str]) -> bool:
        gone = False
        while self._fd is not None:
            try:
                data = os.read(self._fd, _BUFSIZE)
            except BlockingIOError:
                break
            for wd, mask, name in self._parse(data):
                if mask & IN_Q_OVERFLOW:
                    batch[None] = "rescan"
                elif wd != self._wd:
                    continue  # a watch we already dropped
                elif mask & GONE:
                    batch[None] = "rescan"
                    gone = True
                elif name == ATOMIC_SWAP and mask & (IN_MOVED_TO | IN_CREATE):
                    batch[None] = "rescan"
                elif name and not mask & IN_ISDIR and self._wanted(name):
                    path = self.folder / name
                    if mask & REMOVED:
                        batch[path] = "removed"
                    elif mask & CHANGED or (mask & IN_CREATE and self._is_link(path)):
                        batch[path] = "changed"
        if gone and self._fd is not None and self._wd >= 0:
            self._libc.inotify_rm_watch(self._fd, self._wd)  # EINVAL if already gone: fine
            self._wd = -1
        return gone

    @staticmethod
    def _parse(data: bytes):
        off = 0
        while off + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, off)
            raw = data[off + _EVENT.size: off + _EVENT.size + length]
            yield wd, mask, os.fsdecode(raw.split(b"\0", 1)[0])
            off += _EVENT.size + length

    def _wanted(self, name: str) -> bool:
        return name.endswith(self.suffix) and not name.startswith(".") and not name.endswith("~")

    @staticmethod
    def _is_link(path: Path) -> bool:
        """A symlink or hard link appears with IN_CREATE alone, never CLOSE_WRITE."""
        try:
            st = os.lstat(path)
        except OSError:
            return False
        return stat.S_ISLNK(st.st_mode) or st.st_nlink > 1


def _nearest_folder(folder: Path) -> Path:
    """``folder``, or the nearest folder above it that exists."""
    while not folder.is_dir() and folder.parent != folder:
        folder = folder.parent
    return folder


async def wait_for_folder(folder: Path) -> None:
    """Return once ``folder`` exists (as a folder, or a symlink to one). Sleeps in
    inotify on the nearest existing folder above it, waking only when an entry there
    is created, removed or renamed (or that folder itself goes), then looks again.
    Raises WatchError when inotify cannot be used."""
    folder = Path(os.path.abspath(folder))
    while not folder.is_dir():
        above = _nearest_folder(folder.parent)
        with _Watch(above, APPEAR | IN_ONLYDIR) as watch:
            # Look again now that the watch is on: what appeared in between counts.
            if _nearest_folder(folder.parent) == above and not folder.is_dir():
                await watch.wait()


class _Watch:
    """One inotify watch on ``path``; ``wait`` returns after its next events."""

    def __init__(self, path: Path, mask: int) -> None:
        self._libc = _libc()
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise WatchError(err, f"inotify is unavailable: {os.strerror(err)}")
        self._fd = fd
        if self._libc.inotify_add_watch(fd, os.fsencode(path), mask) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise WatchError(err, f"cannot watch folder {path}: {os.strerror(err)}", str(path))

    def __enter__(self) -> _Watch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        os.close(self._fd)

    async def wait(self) -> None:
        await trio.lowlevel.wait_readable(self._fd)
        while True:
            try:
                os.read(self._fd, _BUFSIZE)
            except BlockingIOError:
                return
