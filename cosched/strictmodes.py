"""StrictModes: coschedd runs and trusts only what root or its own user alone can change.

coschedd executes job files as Python code in its own process (as root, in the
shipped unit) and takes its orders from the config file and from whoever reaches
the socket in its runtime folder. Whoever can change any of those owns the host.
So, like sshd's StrictModes, every such path must be owned by a *trusted* uid
(root or the daemon's own user) and must not be writable by group or others:

- the file itself: a regular file, trusted owner, no group/other write. It is
  checked with ``fstat`` on the descriptor the caller then reads from, so what
  was checked is what runs;
- every folder the kernel passes through to reach it, from ``/``, following
  symlinks as the kernel does (so the folders above a symlink's target count,
  and so do the folders holding each symlink): trusted owner, no group/other
  write;
- every symlink on the way: trusted owner (its mode means nothing).

One exception, CERT's "secure directory" rule (FIO15-C) rather than sshd's
(sshd walks only the canonical path and refuses any group/other-writable folder,
/tmp included): a folder owned by root with the sticky bit, like /tmp, may be
world-writable *unless it is the folder that holds the checked file or folder
itself*. The sticky bit lets only the owner of an entry rename or remove it, and
the entry the path continues through is itself checked, so nobody else can
change where the path leads. A jobs folder of mode 1777 is still refused.

No check/use race: the caller opens the file first; the walk then ends on the
entry the path names now and must find the very inode (st_dev, st_ino) that is
open. Swapping anything on the way needs write access to a folder on it, which
the walk refuses.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Collection

__all__ = ["Untrusted", "trusted_uids", "check_file", "check_folder", "read_trusted"]

MAX_SYMLINKS = 40  # as the kernel's ELOOP limit
_READ_CHUNK = 1 << 20


class Untrusted(Exception):
    """A path that someone besides the trusted uids could change; the message names
    the offending file, folder or symlink, its owner and mode, and the fix."""


def trusted_uids() -> frozenset[int]:
    return frozenset({0, os.geteuid()})


def _who(uids: Collection[int]) -> str:
    others = sorted(u for u in uids if u != 0)
    return "root" + "".join(f" or uid {u}" for u in others)


def _describe(kind: str, path: str, st: os.stat_result) -> str:
    if kind == "symlink":
        return f"unsafe symlink {path} (owner uid {st.st_uid})"
    return f"unsafe {kind} {path} (owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})"


def _check_owner(kind: str, path: str, st: os.stat_result, uids: Collection[int]) -> None:
    if st.st_uid not in uids:
        raise Untrusted(f"{_describe(kind, path, st)}: owned by uid {st.st_uid}, not by "
                        f"{_who(uids)} (chown root {path})")


def _check_writers(kind: str, path: str, st: os.stat_result, *, sticky_ok: bool) -> None:
    mode = st.st_mode
    if not mode & (stat.S_IWGRP | stat.S_IWOTH):
        return
    if sticky_ok and st.st_uid == 0 and mode & stat.S_ISVTX:
        return  # see the module docstring: only root-owned sticky folders on the way
    who = {stat.S_IWGRP: "its group", stat.S_IWOTH: "others"}
    writers = " and ".join(w for bit, w in who.items() if mode & bit)
    flags = "".join(f for bit, f in ((stat.S_IWGRP, "g"), (stat.S_IWOTH, "o")) if mode & bit)
    note = "; the sticky bit does not make it safe" if mode & stat.S_ISVTX else ""
    raise Untrusted(f"{_describe(kind, path, st)}: writable by {writers}{note} "
                    f"(chmod {flags}-w {path})")


def _check_folder(path: str, st: os.stat_result, uids: Collection[int], *,
                  holds_final: bool) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise Untrusted(f"{path} is not a folder")
    _check_owner("folder", path, st, uids)
    _check_writers("folder", path, st, sticky_ok=not holds_final)


def _lstat(path: str) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as e:
        raise Untrusted(f"cannot check {path}: {e.strerror}") from None


def _resolve(path: str, uids: Collection[int]) -> tuple[str, os.stat_result]:
    """Follow ``path`` from ``/`` component by component, as the kernel does, checking
    each folder before looking a name up in it and each symlink met. Returns the
    final entry (never a symlink) and its lstat; the caller checks that entry."""
    pending = list(reversed(os.path.abspath(path).split("/")))
    current, st = "/", _lstat("/")
    links = 0
    while True:
        while pending and pending[-1] in ("", "."):
            pending.pop()
        if not pending:
            return current, st
        name = pending.pop()
        if name == "..":  # current has no symlinks in it: its parent was checked on the way
            current = os.path.dirname(current)
            st = _lstat(current)
            continue
        last = all(n in ("", ".") for n in pending)
        _check_folder(current, st, uids, holds_final=last)
        entry = os.path.join(current, name)
        est = _lstat(entry)
        if not stat.S_ISLNK(est.st_mode):
            current, st = entry, est
            continue
        _check_owner("symlink", entry, est, uids)
        links += 1
        if links > MAX_SYMLINKS:
            raise Untrusted(f"cannot check {path}: too many levels of symbolic links")
        try:
            target = os.readlink(entry)
        except OSError as e:
            raise Untrusted(f"cannot check {entry}: {e.strerror}") from None
        pending.extend(reversed(target.split("/")))
        if target.startswith("/"):
            current, st = "/", _lstat("/")


def check_file(fd: int, path: str | os.PathLike,
               uids: Collection[int] | None = None) -> os.stat_result:
    """Check the file open on ``fd`` (opened from ``path``) and the way to it; its fstat."""
    uids = trusted_uids() if uids is None else uids
    path = os.fspath(path)
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    if not stat.S_ISREG(st.st_mode):
        raise Untrusted(f"{path} is not a regular file")
    _check_owner("file", path, st, uids)
    _check_writers("file", path, st, sticky_ok=False)
    final, fst = _resolve(path, uids)
    if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
        raise Untrusted(f"{path} was replaced while it was being checked "
                        f"(now {final}); not using it")
    return st


def check_folder(path: str | os.PathLike, uids: Collection[int] | None = None) -> None:
    """Check a folder the daemon trusts (its runtime folder) and the way to it."""
    uids = trusted_uids() if uids is None else uids
    final, st = _resolve(os.fspath(path), uids)
    _check_folder(final, st, uids, holds_final=True)


def read_trusted(path: str | os.PathLike, *, strict: bool = True,
                 uids: Collection[int] | None = None
                 ) -> tuple[bytes, os.stat_result, Untrusted | None]:
    """Open ``path``, check it, and read it from the checked descriptor.

    Returns (content, fstat, problem). ``strict`` raises ``Untrusted`` instead of
    returning a problem; a non-regular file is refused either way (reading a FIFO
    would block the daemon). Raises ``OSError`` when the file cannot be opened or read,
    or is a folder.
    """
    # O_NONBLOCK: opening a FIFO put in the file's place must not block
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        problem = None
        try:
            st = check_file(fd, path, uids)
        except Untrusted as e:
            st = os.fstat(fd)
            if strict or not stat.S_ISREG(st.st_mode):
                raise
            problem = e
        chunks = []
        while chunk := os.read(fd, _READ_CHUNK):
            chunks.append(chunk)
        return b"".join(chunks), st, problem
    finally:
        os.close(fd)
