"""Tests of cosched.strictmodes on real files and folders in tmp_path.

The tests run as root; "another user" is uid 4242, given files with os.chown
(the machine's accounts are not touched). tmp_path lies under /tmp (root, 1777),
so every test also exercises the rule for root-owned sticky folders on the way.
"""

import os
import re
import stat

import pytest

from cosched.strictmodes import Untrusted, check_file, check_folder, read_trusted

OTHER = 4242

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to other uids")


def make(path, text="async def main(task):\n    pass\n", mode=0o644, uid=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    os.chown(path, uid, -1)
    return path


def folder(path, mode=0o755, uid=0):
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    os.chown(path, uid, -1)
    return path


def refusal(path):
    with pytest.raises(Untrusted) as info:
        read_trusted(path)
    return str(info.value)


# -- the file ---------------------------------------------------------------------

def test_a_root_owned_file_in_safe_folders_is_read(tmp_path):
    path = make(folder(tmp_path / "jobs") / "ok.py", "x = 1\n")
    data, st, problem = read_trusted(path)
    assert (data, problem) == (b"x = 1\n", None)
    assert (st.st_ino, st.st_uid) == (os.stat(path).st_ino, 0)


def test_a_file_owned_by_another_user_is_refused_naming_owner_and_mode(tmp_path):
    path = make(folder(tmp_path / "jobs") / "theirs.py", uid=OTHER)
    message = refusal(path)
    assert message.startswith(f"unsafe file {path} (owner uid {OTHER}, mode 0644): ")
    assert f"owned by uid {OTHER}, not by root" in message and f"chown root {path}" in message


@pytest.mark.parametrize("mode, who, fix", [(0o664, "its group", "g-w"), (0o646, "others", "o-w"),
                                            (0o666, "its group and others", "go-w")])
def test_a_group_or_other_writable_file_is_refused(tmp_path, mode, who, fix):
    path = make(folder(tmp_path / "jobs") / "open.py", mode=mode)
    assert refusal(path) == (f"unsafe file {path} (owner uid 0, mode {mode:04o}): writable by "
                             f"{who} (chmod {fix} {path})")


def test_the_daemons_own_user_is_trusted_like_root(tmp_path):
    jobs = folder(tmp_path / "jobs", uid=OTHER)
    path = make(jobs / "mine.py", uid=OTHER)
    data, _, _ = read_trusted(path, uids={0, OTHER})
    assert data.startswith(b"async def")
    assert f"owner uid {OTHER}" in refusal(path)  # not trusted when we are someone else


def test_a_fifo_is_refused_without_blocking(tmp_path):
    path = folder(tmp_path / "jobs") / "fifo.py"
    os.mkfifo(path, 0o644)
    assert refusal(path) == f"{path} is not a regular file"
    with pytest.raises(Untrusted):  # not even when strict modes are off
        read_trusted(path, strict=False)


def test_a_folder_in_place_of_the_file_cannot_be_read(tmp_path):
    with pytest.raises(IsADirectoryError):
        read_trusted(folder(tmp_path / "jobs" / "dir.py"))


def test_without_strict_modes_the_problem_is_returned_with_the_content(tmp_path):
    path = make(folder(tmp_path / "jobs") / "open.py", "y = 2\n", mode=0o666, uid=OTHER)
    data, _, problem = read_trusted(path, strict=False)
    assert data == b"y = 2\n"
    assert str(problem).startswith(f"unsafe file {path}")


# -- the folders on the way -------------------------------------------------------

@pytest.mark.parametrize("mode", [0o777, 0o775, 0o1777, 0o1775])
def test_the_folder_holding_the_file_may_not_be_writable_sticky_or_not(tmp_path, mode):
    jobs = folder(tmp_path / "jobs", mode)
    path = make(jobs / "a.py")
    message = refusal(path)
    assert message.startswith(f"unsafe folder {jobs} (owner uid 0, mode {mode:04o}): writable by")
    assert ("the sticky bit does not make it safe" in message) == bool(mode & stat.S_ISVTX)


def test_a_folder_owned_by_another_user_is_refused(tmp_path):
    jobs = folder(tmp_path / "jobs", 0o755, uid=OTHER)
    assert refusal(make(jobs / "a.py")).startswith(
        f"unsafe folder {jobs} (owner uid {OTHER}, mode 0755): owned by uid {OTHER}")


def test_every_folder_up_to_the_root_is_checked(tmp_path):
    top = folder(tmp_path / "top", 0o775)
    path = make(folder(top / "a" / "b" / "jobs") / "deep.py")
    assert refusal(path).startswith(f"unsafe folder {top} (owner uid 0, mode 0775): writable")
    os.chmod(top, 0o755)
    os.chown(top, OTHER, -1)
    assert refusal(path).startswith(f"unsafe folder {top} (owner uid {OTHER}")
    os.chown(top, 0, -1)
    assert read_trusted(path)[2] is None


def test_a_root_owned_sticky_folder_higher_up_is_accepted(tmp_path):
    shared = folder(tmp_path / "shared", 0o1777)  # like /tmp
    path = make(folder(shared / "mine" / "jobs") / "a.py")
    assert read_trusted(path)[2] is None


def test_a_sticky_folder_higher_up_must_be_owned_by_root(tmp_path):
    shared = folder(tmp_path / "shared", 0o1777, uid=OTHER)  # its owner may rename anything in it
    path = make(folder(shared / "mine" / "jobs") / "a.py")
    assert refusal(path).startswith(f"unsafe folder {shared} (owner uid {OTHER}")


def test_below_a_sticky_folder_the_next_folder_must_be_trusted(tmp_path):
    shared = folder(tmp_path / "shared", 0o1777)
    theirs = folder(shared / "theirs", 0o755, uid=OTHER)
    path = make(folder(theirs / "jobs") / "a.py")
    assert refusal(path).startswith(f"unsafe folder {theirs} (owner uid {OTHER}")


def test_a_sticky_world_writable_folder_holding_the_file_is_refused(tmp_path):
    shared = folder(tmp_path / "shared", 0o1777)
    assert refusal(make(shared / "a.py")).startswith(f"unsafe folder {shared} (owner uid 0, "
                                                     "mode 1777): writable by its group and others")


# -- symlinks ---------------------------------------------------------------------

def test_a_symlink_to_another_users_file_is_refused(tmp_path):
    target = make(folder(tmp_path / "elsewhere") / "t.py", uid=OTHER)
    link = folder(tmp_path / "jobs") / "a.py"
    link.symlink_to(target)
    assert refusal(link).startswith(f"unsafe file {link} (owner uid {OTHER}")


def test_the_folders_above_a_symlinks_target_are_checked(tmp_path):
    open_folder = folder(tmp_path / "elsewhere", 0o777)
    target = make(folder(open_folder / "deeper") / "t.py")
    link = folder(tmp_path / "jobs") / "a.py"
    link.symlink_to(target)
    assert refusal(link).startswith(f"unsafe folder {open_folder} (owner uid 0, mode 0777)")
    os.chmod(open_folder, 0o755)
    assert read_trusted(link)[0] == target.read_bytes()


def test_a_symlink_owned_by_another_user_is_refused(tmp_path):
    target = make(folder(tmp_path / "elsewhere") / "t.py")
    link = folder(tmp_path / "jobs") / "a.py"
    link.symlink_to(target)
    os.lchown(link, OTHER, -1)
    assert refusal(link) == (f"unsafe symlink {link} (owner uid {OTHER}): owned by uid {OTHER}, "
                             f"not by root (chown root {link})")


def test_symlinked_folders_and_dot_dot_are_followed_as_the_kernel_does(tmp_path):
    real = folder(tmp_path / "real")
    make(folder(real / "jobs") / "a.py", "z = 3\n")
    os.symlink("../real", folder(tmp_path / "links") / "to-real")  # relative, with ..
    path = tmp_path / "links" / "to-real" / "jobs" / ".." / "jobs" / "a.py"
    assert read_trusted(path)[0] == b"z = 3\n"
    os.chmod(tmp_path / "links", 0o777)  # the folder holding a symlink on the way counts
    assert refusal(path).startswith(f"unsafe folder {tmp_path / 'links'} ")


def test_a_symlink_loop_is_refused(tmp_path):
    jobs = folder(tmp_path / "jobs")
    os.symlink("b", jobs / "a")
    os.symlink("a", jobs / "b")
    with pytest.raises(Untrusted, match="too many levels of symbolic links"):
        check_folder(jobs / "a")


# -- no race between check and use ------------------------------------------------

def test_a_file_swapped_after_it_was_opened_is_refused(tmp_path):
    jobs = folder(tmp_path / "jobs")
    path = make(jobs / "a.py", "checked = True\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        os.replace(make(jobs / "b.py", "swapped = True\n"), path)
        with pytest.raises(Untrusted, match=re.escape(f"{path} was replaced while it was being "
                                                      "checked")):
            check_file(fd, path)
    finally:
        os.close(fd)


def test_the_content_is_read_from_the_checked_descriptor(tmp_path):
    # An in-place rewrite after the check cannot slip in: the file is read once,
    # from the descriptor that was checked, and nothing is opened again by name.
    path = make(folder(tmp_path / "jobs") / "a.py", "v = 1\n")
    data, st, _ = read_trusted(path)
    assert data == b"v = 1\n" and st.st_size == len(data)


# -- folders the daemon trusts ----------------------------------------------------

def test_a_safe_runtime_folder_passes(tmp_path):
    check_folder(folder(tmp_path / "run", 0o750))


@pytest.mark.parametrize("mode", [0o770, 0o757, 0o1777])
def test_a_writable_runtime_folder_is_refused(tmp_path, mode):
    run = folder(tmp_path / "run", mode)
    with pytest.raises(Untrusted, match=re.escape(f"unsafe folder {run} (owner uid 0, "
                                                  f"mode {mode:04o}): writable by")):
        check_folder(run)


def test_a_runtime_folder_owned_by_another_user_is_refused(tmp_path):
    run = folder(tmp_path / "run", 0o700, uid=OTHER)
    with pytest.raises(Untrusted, match=re.escape(f"unsafe folder {run} (owner uid {OTHER}")):
        check_folder(run)
