"""Tests for the inotify-based jobs folder watcher."""

import errno
import os
import shutil

import pytest
import trio
import trio.testing

from cosched.watch import Change, DirWatcher, WatchError


def first_batch(folder, action):
    """Start watching, run `action`, and return the first batch (bounded wait)."""

    async def main():
        with DirWatcher(folder) as watcher:
            batches = watcher.changes()
            action()
            with trio.fail_after(5):
                batch = await batches.__anext__()
            await batches.aclose()
            return batch

    return trio.run(main)


def changed(path):
    return Change("changed", path)


def removed(path):
    return Change("removed", path)


def test_new_file_is_one_change(tmp_path):
    job = tmp_path / "a.py"
    assert first_batch(tmp_path, lambda: job.write_text("x = 1\n")) == [changed(job)]


def test_modified_file_is_a_change(tmp_path):
    job = tmp_path / "a.py"
    job.write_text("x = 1\n")
    assert first_batch(tmp_path, lambda: job.write_text("x = 2\n")) == [changed(job)]


def test_chmod_is_a_change(tmp_path):
    job = tmp_path / "a.py"
    job.write_text("x = 1\n")
    os.chmod(job, 0o644)
    assert first_batch(tmp_path, lambda: os.chmod(job, 0o666)) == [changed(job)]


def test_rename_in_is_a_change_for_the_target_only(tmp_path):
    tmp = tmp_path / "x.tmp"
    job = tmp_path / "x.py"

    def action():
        tmp.write_text("x = 1\n")
        os.rename(tmp, job)

    assert first_batch(tmp_path, action) == [changed(job)]


def test_create_alone_waits_for_close_write(tmp_path):
    slow = tmp_path / "slow.py"
    real = tmp_path / "real.py"

    async def main():
        with DirWatcher(tmp_path) as watcher:
            batches = watcher.changes()
            with open(slow, "w") as f:
                f.write("x = 1\n")
                f.flush()
                real.write_text("y = 1\n")
                with trio.fail_after(5):
                    assert await batches.__anext__() == [changed(real)]
            with trio.fail_after(5):
                assert await batches.__anext__() == [changed(slow)]
            await batches.aclose()

    trio.run(main)


def test_symlink_is_a_change(tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("x = 1\n")
    link = tmp_path / "link.py"
    assert first_batch(tmp_path, lambda: os.symlink(target, link)) == [changed(link)]


def test_delete_is_removed(tmp_path):
    job = tmp_path / "a.py"
    job.write_text("x = 1\n")
    assert first_batch(tmp_path, job.unlink) == [removed(job)]


def test_rename_out_is_removed(tmp_path):
    folder = tmp_path / "jobs"
    folder.mkdir()
    job = folder / "a.py"
    job.write_text("x = 1\n")
    outside = tmp_path / "a.py"
    assert first_batch(folder, lambda: os.rename(job, outside)) == [removed(job)]


def test_ignored_names_produce_nothing(tmp_path):
    real = tmp_path / "real.py"

    def action():
        for name in ("notes.txt", ".hidden.py", "a.py~", ".#b.py", "c.pyc"):
            (tmp_path / name).write_text("ignored\n")
        os.chmod(tmp_path / "notes.txt", 0o600)
        (tmp_path / "notes.txt").unlink()
        (tmp_path / "sub.py").mkdir()
        real.write_text("x = 1\n")

    assert first_batch(tmp_path, action) == [changed(real)]


def test_many_writes_coalesce_per_path(tmp_path):
    a, b, c, d = (tmp_path / n for n in ("a.py", "b.py", "c.py", "d.py"))
    d.write_text("old\n")

    def action():
        d.unlink()
        a.write_text("1\n")
        b.write_text("1\n")
        for i in range(20):
            a.write_text(f"{i}\n")
            os.chmod(a, 0o644)
        c.write_text("1\n")
        c.unlink()
        d.write_text("new\n")

    # d.py: last kind wins ("changed") but keeps its first position.
    expected = [changed(d), changed(a), changed(b), removed(c)]
    assert first_batch(tmp_path, action) == expected


def test_missing_folder_raises_watch_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(WatchError) as info:
        DirWatcher(missing)
    assert isinstance(info.value, OSError)
    assert info.value.errno == errno.ENOENT
    assert str(missing) in str(info.value)


def test_file_instead_of_folder_raises_watch_error(tmp_path):
    afile = tmp_path / "file.py"
    afile.write_text("")
    with pytest.raises(WatchError) as info:
        DirWatcher(afile)
    assert info.value.errno == errno.ENOTDIR
    assert str(afile) in str(info.value)


def test_removing_the_folder_reports_rescan_and_ends(tmp_path):
    folder = tmp_path / "jobs"
    folder.mkdir()
    (folder / "a.py").write_text("x = 1\n")

    async def main():
        with DirWatcher(folder) as watcher:
            batches = []
            shutil.rmtree(folder)
            with trio.fail_after(5):
                async for batch in watcher.changes():
                    batches.append(batch)
            return batches

    batches = trio.run(main)
    assert batches, "no batch after the folder was removed"
    assert batches[-1][-1] == Change("rescan", None)
    assert removed(folder / "a.py") in [c for batch in batches for c in batch]


def test_close_while_waiting_ends_the_iteration(tmp_path):
    watcher = DirWatcher(tmp_path)
    got = []
    finished = []

    async def consume():
        async for batch in watcher.changes():
            got.append(batch)
        finished.append(True)

    async def main():
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                await trio.testing.wait_all_tasks_blocked()
                watcher.close()

    trio.run(main)
    assert finished == [True]
    assert got == []
    watcher.close()  # idempotent


def test_idle_watcher_does_not_poll(tmp_path):
    steps = []

    class CountSteps(trio.abc.Instrument):
        def before_task_step(self, task):
            if task.name == "watcher":
                steps.append(task)

    async def watch(watcher):
        async for _batch in watcher.changes():
            pass

    async def main():
        with DirWatcher(tmp_path) as watcher:
            with trio.move_on_after(0.5):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch, watcher, name="watcher")

    trio.run(main, instruments=[CountSteps()])
    assert 1 <= len(steps) <= 2, f"watcher task stepped {len(steps)} times while idle"


# -- a folder that appears later; ConfigMap-style atomic swaps ---------------------

def configmap(folder, files, version):
    """Lay out ``folder`` as kubelet does for a ConfigMap volume: the files live in a
    timestamped folder, ``..data`` points at it, and each visible name is a symlink
    through ``..data``. A later version is swapped in by renaming a new ``..data``."""
    folder.mkdir(exist_ok=True)
    stamp = folder / f"..2024_01_0{version}"
    stamp.mkdir()
    for name, text in files.items():
        (stamp / name).write_text(text)
    tmp = folder / "..data_tmp"
    os.symlink(stamp.name, tmp)
    os.replace(tmp, folder / "..data")
    for name in files:
        if not (folder / name).is_symlink():
            os.symlink(f"..data/{name}", folder / name)


def test_a_configmap_swap_is_a_rescan(tmp_path):
    configmap(tmp_path, {"a.py": "x = 1\n"}, 1)
    batch = first_batch(tmp_path, lambda: configmap(tmp_path, {"a.py": "x = 2\n"}, 2))
    assert Change("rescan", None) in batch
    assert (tmp_path / "a.py").read_text() == "x = 2\n"


def test_waiting_for_a_folder_returns_once_it_and_its_parents_appear(tmp_path):
    from cosched.watch import wait_for_folder
    target = tmp_path / "a" / "b" / "jobs"

    async def main():
        done = trio.Event()

        async def waiter():
            await wait_for_folder(target)
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            with trio.fail_after(5):
                for folder in (tmp_path / "a", tmp_path / "a" / "b"):
                    await trio.testing.wait_all_tasks_blocked()
                    folder.mkdir()
                    await trio.testing.wait_all_tasks_blocked()
                    assert not done.is_set()
                (tmp_path / "elsewhere").mkdir()
                os.rename(tmp_path / "elsewhere", target)  # appears by a rename
                await done.wait()

    trio.run(main)


def test_waiting_for_a_folder_that_exists_returns_at_once(tmp_path):
    from cosched.watch import wait_for_folder

    async def main():
        with trio.fail_after(5):
            await wait_for_folder(tmp_path)

    trio.run(main)
