"""coschedd: run the jobs folder as supervised coroutines, with a control socket.

usage: coschedd [--config PATH] [--jobs-dir DIR] [--socket PATH]
                [--log-format auto|console|json] [--log-level LEVEL] [--version]

Socket activation: started by systemd with a passed socket (coschedd.socket;
LISTEN_FDS/LISTEN_PID, descriptor 3, see cosched.activation), the daemon serves
that socket and leaves it in place when it exits.

Signals: SIGTERM/SIGINT stop gracefully (every task is killed and its cleanup
runs, within daemon.stop_timeout; cleanup still running then is abandoned and
the daemon exits anyway, logging the tasks it abandoned); SIGHUP reloads: it
re-reads the config file (a bad one is refused, logged, and the one in force
stays; see cosched.reconfig) and rescans the jobs folder, like coschedctl reload.
The jobs folder is watched with inotify, also when it does not exist yet. A step
that runs away when a signal arrives is interrupted. Under systemd (Type=notify)
it reports READY, RELOADING, STOPPING and STATUS, and pings the watchdog from
the event loop when WatchdogSec is set.

The state database (cosched.store) is opened before any job runs; at a stop
everything recorded is committed before the process exits.

Exit codes: 0 stopped (cleanly, or with abandoned cleanup, which is logged),
1 failed while running (or cannot listen on metrics.listen: the port is taken),
2 bad configuration or arguments, an unsafe config file, runtime or state
folder (see cosched.strictmodes), or a state database that cannot be used (a
corrupt one is moved aside first), 4 a task's step could not be interrupted
(stuck in C code past step_limit plus a grace period): the daemon ended itself
so that its service manager restarts it.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import os
import signal
import stat
import sys
from pathlib import Path

import structlog
import trio
import trio.testing

from . import __version__, activation, httpserve
from . import log as logsetup
from .config import ConfigError, load_config
from .control import Access, Limits, serve
from .forks import ForkWatch
from .guard import EXIT_STUCK
from .loader import set_strict_modes
from .logsink import LogSink
from .protocol import private_path
from .recorder import Recorder
from .store import Initial, Store, StoreError
from .strictmodes import Untrusted, check_folder
from .supervisor import NAMED, Supervisor
from .systemd import Notifier
from .timers import Timers
from .watch import DirWatcher, WatchError, wait_for_folder

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
__all__ = ["main", "EXIT_OK", "EXIT_FAILED", "EXIT_CONFIG", "EXIT_STUCK"]
DAEMON_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
LOG_DRAIN = 5.0   # seconds the last log lines get to reach stderr at exit
STREAM_DRAIN = 0.5  # seconds followers' last lines get to be written at exit
LOST_NAMED = 20    # ids of tasks found lost at start that the warning names (it counts all)

log = structlog.get_logger("cosched.daemon")


def parse_args(argv):
    return build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coschedd", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, help="configuration file (default: $COSCHED_CONFIG, "
                   "/etc/cosched/coschedd.toml, or the repository's config/coschedd.toml)")
    p.add_argument("--jobs-dir", type=Path, help="override daemon.jobs_dir")
    p.add_argument("--socket", type=Path, help="override control.socket")
    p.add_argument("--log-format", choices=["auto", "console", "json"], help="override log.format")
    p.add_argument("--log-level", choices=sorted(logsetup.LEVELS), help="override log.level")
    p.add_argument("--version", action="version", version=f"coschedd {__version__}")
    return p


def overrides(args) -> dict:
    """The config fields the command line sets (they win over the file, also on reload)."""
    return {k: v for k, v in {
        "jobs_dir": args.jobs_dir and args.jobs_dir.resolve(),
        "socket": args.socket and args.socket.resolve(),
        "log_format": args.log_format, "log_level": args.log_level}.items() if v}


def configure(args):
    return dataclasses.replace(load_config(args.config), **overrides(args))


async def run(config, notifier: Notifier, sink: LogSink | None = None,
              metrics_sock=None, control_sock=None, cli_overrides: dict | None = None,
              state: tuple[Store, Initial] | None = None) -> None:
    """Signals and the control socket first, then the jobs: a job's first step may be
    long, and a SIGTERM or a coschedctl call must never find the daemon half ready."""
    sup = Supervisor(config, log_sink=sink, on_stuck=lambda code: _exit_now(sink, code))
    sup.overrides = cli_overrides or {}
    recorder = Recorder(*state, sup, history=config.history) if state is not None else None
    timers = Timers(sup, recorder=recorder)
    forks = ForkWatch(sup.guard)
    with trio.open_signal_receiver(*DAEMON_SIGNALS) as signals:
        sup.guard.wrap_daemon_signals(DAEMON_SIGNALS)
        async with trio.open_nursery() as nursery:
            server, server_closed = trio.CancelScope(), trio.Event()
            await nursery.start(_serve, server, server_closed, config, sup, control_sock)
            await nursery.start(sup.run)
            if metrics_sock is not None:
                await nursery.start(httpserve.serve, metrics_sock, sup)
            await nursery.start(timers.run)
            nursery.start_soon(watch_jobs, sup)
            nursery.start_soon(forks.reap)
            if config.watchdog:
                nursery.start_soon(notifier.watchdog_loop)
            notifier.ready(status=_status_line(sup))
            log.info("coschedd ready", socket=str(config.socket), jobs_dir=str(config.jobs_dir),
                     tasks=len(sup.tasks))
            abandoned = await handle_signals(signals, sup, notifier, config)
            await _end_streams(sup)
            server.cancel()
            if recorder is not None:   # what the stop recorded reaches the disk first
                await recorder.close(LOG_DRAIN)
            if abandoned:  # their trio tasks would hold the nursery open for ever
                with trio.move_on_after(2):
                    await server_closed.wait()   # the server has removed its socket file
                log.error("coschedd stopped; cleanup of these tasks was abandoned",
                          tasks=[f"{t.name} (#{t.id})" for t in abandoned[:NAMED]],
                          more=max(0, len(abandoned) - NAMED), timeout=config.stop_timeout)
                notifier.close()
                _exit_now(sink, EXIT_OK)
            nursery.cancel_scope.cancel()


async def _serve(scope: trio.CancelScope, closed: trio.Event, config, sup: Supervisor,
                 passed=None, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    try:
        with scope:
            await serve(config.socket, config.socket_mode, sup,
                        max_line=config.max_request_bytes, access=Access.from_config(config),
                        limits=lambda: Limits.from_config(sup.config), task_status=task_status,
                        guard=sup.guard,
                        connections=lambda count: setattr(sup.collector, "connections", count),
                        passed=passed, private=Path(private_path(str(config.socket))))
    finally:
        closed.set()


async def _end_streams(sup: Supervisor) -> None:
    """Followers get their streams' last lines before the server goes: the tasks' ended
    with them, the event stream is ended now; the server writes them once its tasks run."""
    sup.event_log.close()
    sup.task_logs.close()
    with trio.move_on_after(STREAM_DRAIN):
        await trio.testing.wait_all_tasks_blocked()


def _exit_now(sink: LogSink | None, code: int) -> None:
    """End the process without trio's teardown (it would wait for tasks that never end)."""
    if sink is not None:
        sink.drain(LOG_DRAIN)
    os._exit(code)


async def handle_signals(signals, sup: Supervisor, notifier: Notifier, config) -> list:
    """SIGHUP reloads; SIGTERM/SIGINT stop gracefully. Returns once the tasks are cleaned
    up, with the tasks whose cleanup was abandoned."""
    async for signum in signals:
        if signum == signal.SIGHUP:
            notifier.reloading()
            try:
                await sup.reload_all()
            except ConfigError as e:
                log.error("reload refused: the configuration in force is unchanged",
                          error=str(e))
            notifier.ready(status=_status_line(sup))
            continue
        notifier.stopping()
        log.info("stopping", signal=signal.Signals(signum).name, timeout=config.stop_timeout)
        return await sup.stop(config.stop_timeout)
    return []


async def watch_jobs(sup: Supervisor) -> None:
    """Follow the jobs folder with inotify; wait for it while it is missing (at start,
    or removed later), and rescan once it is (back) there."""
    folder = sup.config.jobs_dir
    while True:
        try:
            watcher = DirWatcher(folder)
        except WatchError as e:
            if folder.is_dir() or not await _wait_for_jobs_folder(folder, str(e)):
                log.error("cannot watch the jobs folder; use SIGHUP or coschedctl reload",
                          error=str(e))
                return
            continue
        with watcher:
            # What changed before the watch was on (since the start's scan, or while the
            # folder was missing) is seen now; unchanged files are not loaded again.
            sup.rescan(retry_refused=False)
            async for batch in watcher.changes():
                for change in batch:
                    if change.kind == "rescan":
                        sup.rescan()
                    else:
                        sup.sync_file(change.path)
        if not folder.is_dir() and not await _wait_for_jobs_folder(folder, "it is gone"):
            return


async def _wait_for_jobs_folder(folder: Path, why: str) -> bool:
    """Until the jobs folder exists; False if it cannot be waited for (no inotify)."""
    log.warning("no jobs folder; it will be loaded as soon as it appears", folder=str(folder),
                reason=why)
    try:
        await wait_for_folder(folder)
    except WatchError as e:
        log.error("cannot wait for the jobs folder", folder=str(folder), error=str(e))
        return False
    log.info("jobs folder appeared", folder=str(folder))
    return True


def prepare_runtime(config) -> None:
    """Create the runtime and socket folders if missing and check them: whoever could
    change them could put an impostor socket in the daemon's place. When the socket's
    folder is the runtime folder, the daemon's own, let the principals of
    control.*_users/_group traverse it (group, or others when the socket is
    world-connectable). Raises Untrusted, or OSError when a folder cannot be set up."""
    access = Access.from_config(config)
    for folder in dict.fromkeys([config.runtime_dir, config.socket.parent]):
        folder.mkdir(parents=True, exist_ok=True, mode=0o750)
        try:
            check_folder(folder)
        except Untrusted as e:
            if config.strict_modes:
                raise
            log.warning("strict_modes is off: using an unsafe runtime folder", reason=str(e))
    if config.socket.parent != config.runtime_dir:
        return  # a folder the administrator chose: theirs to open to others
    folder, gid = config.runtime_dir, access.socket_group()
    if gid is not None and os.stat(folder).st_gid != gid:
        try:
            os.chown(folder, -1, gid)
        except PermissionError as e:
            raise PermissionError(e.errno, f"cannot give {folder} to group {gid}: {e.strerror} "
                                           "(the daemon's user must be a member of it)") from None
    need = 0o001 if access.world_connectable() else 0o010 if gid is not None else 0
    mode = stat.S_IMODE(os.stat(folder).st_mode)
    if mode & need != need:
        os.chmod(folder, mode | need)


def _passed_socket(config):
    """The control socket systemd passed (coschedd.socket), or None. One at another path
    than control.socket is served all the same, with a warning: coschedctl looks for the
    daemon at control.socket."""
    passed = activation.control_socket()
    if passed is None:
        return None
    sock, name = passed
    path = activation.socket_path(sock)
    if path != str(config.socket):
        log.warning("the control socket passed by the service manager is not at "
                    "control.socket; coschedctl finds the daemon by control.socket",
                    passed=path or "(unnamed)", control_socket=str(config.socket))
    log.info("using the control socket passed by the service manager", name=name, path=path)
    return sock


def open_state(config) -> tuple[Store, Initial]:
    """Open the state database before any job runs (see cosched.store). Raises StoreError,
    or Untrusted for a state folder that others could change (unless strict_modes is off)."""
    store = Store(config.state_dir, max_rows=config.history_rows, max_days=config.history_days)
    store.prepare_folder()
    try:
        check_folder(config.state_dir)
    except Untrusted as e:
        if config.strict_modes:
            raise
        log.warning("strict_modes is off: using an unsafe state folder", reason=str(e))
    initial = store.open()
    if initial.lost:   # (a million ids would be one line of megabytes: the first twenty)
        log.warning("coschedd last ended without stopping these tasks (killed or crashed); "
                    "they are recorded as lost", tasks=initial.lost[:LOST_NAMED],
                    count=len(initial.lost))
    log.info("state database open", path=str(store.path), next_task_id=initial.next_id,
             saved_states=len(initial.states), interrupted=sorted(initial.interrupted))
    store.start()
    return store, initial


def _status_line(sup: Supervisor) -> str:
    """systemd's STATUS= at start and after each reload (counted from the registry's
    index by state: reading every task was 11 ms of the loop per 100,000 tasks)."""
    return f"{sup.reg.count_alive()} tasks, {len(sup.job_table)} jobs"


class _CannotStart(Exception):
    """Start-up stops before any job runs: the message for stderr, and the exit code."""

    def __init__(self, message: str, code: int = EXIT_CONFIG) -> None:
        super().__init__(message)
        self.code = code


def prepare(config) -> tuple:
    """What must be in place before trio starts: the runtime folder, the passed control
    socket, the metrics socket, the state database. Raises _CannotStart."""
    try:
        prepare_runtime(config)
    except Untrusted as e:
        raise _CannotStart(f"refusing to start: runtime folder: {e}") from None
    except OSError as e:
        raise _CannotStart(f"cannot set up the runtime folder: {e}") from None
    try:
        control_sock = _passed_socket(config)
    except activation.ActivationError as e:
        raise _CannotStart(f"socket activation: {e}") from None
    metrics_sock = None
    if config.metrics_listen is not None:
        try:
            metrics_sock = httpserve.bind(config.metrics_listen)
        except httpserve.MetricsAddressError as e:
            raise _CannotStart(e.strerror, EXIT_FAILED) from None
    try:
        state = open_state(config)
    except Untrusted as e:
        raise _CannotStart(f"refusing to start: state folder: {e}") from None
    except StoreError as e:
        raise _CannotStart(f"cannot open the state database: {e}") from None
    return control_sock, metrics_sock, state


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        config = configure(args)
    except ConfigError as e:
        print(f"coschedd: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    sink = LogSink((sys.stdout if config.log_stream == "stdout" else sys.stderr).fileno())
    logsetup.setup(config.log_format, config.log_level, sink)
    for warning in config.warnings:
        log.warning("configuration", note=warning)
    if not config.strict_modes:
        log.warning("strict_modes is off: unsafe job files and runtime folders are used "
                    "anyway; for development only")
    set_strict_modes(config.strict_modes)
    try:
        control_sock, metrics_sock, state = prepare(config)
    except _CannotStart as e:
        print(f"coschedd: {e}", file=sys.stderr)
        return e.code
    notifier = Notifier()
    try:
        trio.run(run, config, notifier, sink, metrics_sock, control_sock, overrides(args), state)
    except OSError as e:
        log.error("coschedd failed", error=str(e))
        return EXIT_FAILED
    finally:
        state[0].close(LOG_DRAIN)   # (closed already after a clean stop)
        notifier.close()
        _end_worker_processes()
        log.info("coschedd stopped")
        sink.drain(LOG_DRAIN)
    return EXIT_OK


def _end_worker_processes() -> None:
    """End task.run_in_process's cached worker processes now, as trio-parallel would at
    exit, but quietly: one that the service manager signalled with the daemon (systemd
    signals the whole control group) exits nonzero, and that is no error to print."""
    impl = sys.modules.get("trio_parallel._impl")
    if impl is None:   # no job used run_in_process
        return
    shutdown = getattr(impl, "graceful_default_shutdown", None)
    if shutdown is None:
        return
    atexit.unregister(shutdown)
    try:
        shutdown()
    except Exception as e:  # noqa: BLE001 - BrokenWorkerProcessError and kin, at exit
        log.info("worker processes ended", note=str(e)[:200])

if __name__ == "__main__":
    sys.exit(main())
