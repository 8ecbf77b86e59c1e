"""Tests of cosched.config: loading, defaults, path rules and strict validation."""

import dataclasses
import os
import grp
import pwd
import re
import tomllib
from pathlib import Path

import pytest

from cosched.config import (
    REPO_CONFIG, SCHEMA, SYSTEM_CONFIG, Config, ConfigError, JobPolicy,
    default_config_path, default_toml, load_config, parse_config,
)


def write(tmp_path: Path, text: str, name: str = "etc/coschedd.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str, **environ: str) -> Config:
    # an explicit environment, so the host's XDG_RUNTIME_DIR etc. never leak in
    return load_config(write(tmp_path, text), environ=environ)


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as excinfo:
        load(tmp_path, text)
    return str(excinfo.value)


def other_user() -> pwd.struct_passwd:
    return next(u for u in pwd.getpwall() if u.pw_uid != 0)


def other_group() -> grp.struct_group:
    return next(g for g in grp.getgrall() if g.gr_gid != 0)


# --- the shipped file and the defaults ---

def test_shipped_file_loads_and_equals_the_defaults():
    shipped = load_config(REPO_CONFIG, environ={})
    defaults = parse_config({}, REPO_CONFIG.parent, environ={})
    assert defaults.path is None
    assert shipped == dataclasses.replace(defaults, path=REPO_CONFIG)


def test_shipped_file_is_the_rendered_schema():
    assert REPO_CONFIG.read_text() == default_toml()


def test_shipped_file_has_every_key_with_a_comment_giving_its_default():
    text = REPO_CONFIG.read_text()
    data = tomllib.loads(text)
    assert {s: set(t) for s, t in data.items()} == {s: set(k) for s, k in SCHEMA.items()}
    lines = text.splitlines()
    for keys in SCHEMA.values():
        for name in keys:
            (i,) = [i for i, line in enumerate(lines) if line.startswith(f"{name} = ")]
            value = lines[i].split(" = ", 1)[1]
            assert lines[i - 1].startswith("# ") and f"Default: {value}." in lines[i - 1], name
            assert lines[i - 2].startswith("# "), name  # the meaning, above the default


def test_every_default(tmp_path):
    config = load(tmp_path, "")
    etc = tmp_path / "etc"
    assert config == Config(
        path=etc / "coschedd.toml", jobs_dir=tmp_path / "jobs", runtime_dir=tmp_path / ".run",
        state_dir=Path("/var/lib/cosched") if os.geteuid() == 0 else tmp_path / ".state",
        socket=tmp_path / ".run" / "coschedd.sock", socket_mode=0o660, read_users=(),
        read_group=None, control_users=(), control_group=None, max_request_bytes=65536,
        max_connections=64, max_connections_per_user=8, idle_timeout=60.0, log_format="auto",
        log_level="info", step_warning=0.5, stop_timeout=10.0, worker_threads=16, watchdog=True, strict_modes=True,
        job_defaults=JobPolicy(restart="on-failure", restart_delay=1.0, restart_delay_max=30.0,
                               start_limit_burst=5, start_limit_interval=60.0, autostart=True,
                               step_limit=10.0, enabled=True, config={}, overlap="skip",
                               catch_up=False, timezone="", schedule="", every=None),
        jobs={}, history=True, history_rows=100_000, history_days=30.0)


def test_a_partial_table_keeps_the_other_defaults(tmp_path):
    config = load(tmp_path, '[log]\nlevel = "debug"\n[jobs]\nrestart = "always"\n')
    assert (config.log_level, config.log_format) == ("debug", "auto")
    assert config.job_defaults.restart == "always"
    assert config.job_defaults.restart_delay == 1.0 and config.stop_timeout == 10.0


def test_every_key_is_read_from_the_file(tmp_path):
    config = load(tmp_path, """
        [daemon]
        jobs_dir = "/srv/jobs"
        runtime_dir = "/run/x"
        step_warning = 0.25
        stop_timeout = 3.5
        watchdog = false
        strict_modes = false
        [control]
        socket = "/run/x/ctl"
        mode = "0600"
        read_users = [1233]
        read_group = 4320
        control_users = [1234]
        control_group = 4321
        max_request_bytes = 1024
        max_connections = 100
        max_connections_per_user = 3
        idle_timeout = 2.5
        [log]
        format = "json"
        level = "error"
        [jobs]
        restart = "no"
        restart_delay = 2.0
        restart_delay_max = 8.0
        start_limit_burst = 3
        start_limit_interval = 9.0
        autostart = false
    """)
    assert (config.jobs_dir, config.runtime_dir, config.socket) == (
        Path("/srv/jobs"), Path("/run/x"), Path("/run/x/ctl"))
    assert (config.step_warning, config.stop_timeout, config.watchdog) == (0.25, 3.5, False)
    assert config.strict_modes is False
    assert (config.socket_mode, config.read_users, config.read_group) == (0o600, (1233,), 4320)
    assert (config.control_users, config.control_group) == ((1234,), 4321)
    assert (config.max_connections, config.max_connections_per_user, config.idle_timeout) == (
        100, 3, 2.5)
    assert config.warnings == ()
    assert (config.max_request_bytes, config.log_format, config.log_level) == (1024, "json", "error")
    assert config.job_defaults == JobPolicy("no", 2.0, 8.0, 3, 9.0, False, 10.0, True, {})


# --- paths ---

def test_relative_paths_are_relative_to_the_config_folder(tmp_path):
    config = load(tmp_path, """
        [daemon]
        jobs_dir = "my-jobs"
        runtime_dir = "../state"
        [control]
        socket = "sub/ctl.sock"
    """)
    assert config.jobs_dir == tmp_path / "etc" / "my-jobs"
    assert config.runtime_dir == tmp_path / "state"
    assert config.socket == tmp_path / "etc" / "sub" / "ctl.sock"


def test_a_relative_config_path_still_gives_absolute_paths(tmp_path, monkeypatch):
    write(tmp_path, "")
    monkeypatch.chdir(tmp_path)
    config = load_config("etc/coschedd.toml", environ={})
    assert config.path == tmp_path / "etc" / "coschedd.toml"
    assert config.jobs_dir == tmp_path / "jobs" and config.jobs_dir.is_absolute()


def test_runtime_dir_set_in_the_file_wins_over_the_environment(tmp_path):
    config = load(tmp_path, '[daemon]\nruntime_dir = "/srv/state"\n',
                  RUNTIME_DIRECTORY="/run/cosched", XDG_RUNTIME_DIR="/run/user/1000")
    assert config.runtime_dir == Path("/srv/state")
    assert config.socket == Path("/srv/state/coschedd.sock")


def test_runtime_dir_from_systemd_runtime_directory(tmp_path):
    config = load(tmp_path, "", RUNTIME_DIRECTORY="/run/cosched", XDG_RUNTIME_DIR="/run/user/1000")
    assert config.runtime_dir == Path("/run/cosched")
    assert config.socket == Path("/run/cosched/coschedd.sock")


def test_runtime_dir_takes_the_first_of_several_systemd_directories(tmp_path):
    config = load(tmp_path, "", RUNTIME_DIRECTORY="/run/cosched:/run/other")
    assert config.runtime_dir == Path("/run/cosched")


def test_runtime_dir_from_xdg_runtime_dir(tmp_path):
    config = load(tmp_path, "", XDG_RUNTIME_DIR="/run/user/1000")
    assert config.runtime_dir == Path("/run/user/1000/cosched")
    assert config.socket == Path("/run/user/1000/cosched/coschedd.sock")


def test_runtime_dir_falls_back_next_to_the_config_folder(tmp_path):
    config = load(tmp_path, "")
    assert config.runtime_dir == tmp_path / ".run"


def test_runtime_dir_ignores_empty_environment_variables(tmp_path):
    config = load(tmp_path, "", RUNTIME_DIRECTORY="", XDG_RUNTIME_DIR="")
    assert config.runtime_dir == tmp_path / ".run"


def test_socket_path_too_long_for_a_unix_socket(tmp_path):
    message = error(tmp_path, f'[daemon]\nruntime_dir = "/{"x" * 100}"\n')
    assert message.startswith("control.socket:") and "107 bytes" in message


# --- the config file itself ---

def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=re.escape(f"{path}: no such config file")):
        load_config(path, environ={})


def test_unreadable_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path}: cannot read")):
        load_config(tmp_path, environ={})


def test_toml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, '[daemon]\nstop_timeout = 1\njobs_dir = "unterminated\n')
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, environ={})
    assert str(path) in str(excinfo.value) and "line 3" in str(excinfo.value)


def test_invalid_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_bytes(b'[log]\nlevel = "\xff"\n')
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_config(path, environ={})


def test_default_config_path_from_cosched_config(tmp_path):
    assert default_config_path({"COSCHED_CONFIG": str(tmp_path / "x.toml")}) == tmp_path / "x.toml"


def test_default_config_path_without_cosched_config():
    expected = SYSTEM_CONFIG if SYSTEM_CONFIG.exists() else REPO_CONFIG
    assert default_config_path({}) == expected
    assert default_config_path({"COSCHED_CONFIG": ""}) == expected
    assert REPO_CONFIG == Path(__file__).resolve().parent.parent / "config" / "coschedd.toml"


def test_load_config_without_path_follows_cosched_config(tmp_path):
    path = write(tmp_path, '[log]\nlevel = "warning"\n')
    config = load_config(environ={"COSCHED_CONFIG": str(path)})
    assert config.path == path and config.log_level == "warning"


# --- types and values ---

def test_integers_are_accepted_where_floats_are_expected(tmp_path):
    config = load(tmp_path, "[daemon]\nstop_timeout = 3\n[jobs]\nrestart_delay = 0\n")
    assert config.stop_timeout == 3.0 and type(config.stop_timeout) is float
    assert config.job_defaults.restart_delay == 0.0 and type(config.job_defaults.restart_delay) is float


def test_string_where_a_number_is_expected(tmp_path):
    assert error(tmp_path, '[daemon]\nstep_warning = "1"\n') == \
        'daemon.step_warning: expected a number >= 0, got "1"'


def test_bool_is_not_a_number(tmp_path):
    assert error(tmp_path, "[daemon]\nstop_timeout = true\n") == \
        "daemon.stop_timeout: expected a number >= 0, got true"
    assert error(tmp_path, "[control]\nmax_request_bytes = true\n").startswith(
        "control.max_request_bytes: expected an integer")


def test_number_is_not_a_bool(tmp_path):
    assert error(tmp_path, "[daemon]\nwatchdog = 1\n") == \
        "daemon.watchdog: expected true or false, got 1"


def test_number_is_not_a_string(tmp_path):
    assert error(tmp_path, "[daemon]\njobs_dir = 5\n") == "daemon.jobs_dir: expected a string, got 5"


def test_negative_delay(tmp_path):
    assert error(tmp_path, "[jobs]\nrestart_delay = -1\n") == \
        "jobs.restart_delay: expected a number >= 0, got -1"


def test_nan_and_infinity_are_not_durations(tmp_path):
    assert error(tmp_path, "[daemon]\nstop_timeout = nan\n").startswith("daemon.stop_timeout: expected")
    assert error(tmp_path, "[daemon]\nstep_warning = inf\n").startswith("daemon.step_warning: expected")


def test_start_limits_must_be_positive(tmp_path):
    assert error(tmp_path, "[jobs]\nstart_limit_interval = 0\n") == \
        "jobs.start_limit_interval: expected a number > 0, got 0"
    assert error(tmp_path, "[jobs]\nstart_limit_burst = 0\n").startswith(
        "jobs.start_limit_burst: expected an integer from 1")
    assert error(tmp_path, "[jobs]\nstart_limit_burst = 2.0\n").startswith("jobs.start_limit_burst:")


def test_max_request_bytes_range(tmp_path):
    assert load(tmp_path, "[control]\nmax_request_bytes = 256\n").max_request_bytes == 256
    assert load(tmp_path, "[control]\nmax_request_bytes = 16777216\n").max_request_bytes == 16777216
    for bad in ("255", "16777217", "1024.0"):
        assert error(tmp_path, f"[control]\nmax_request_bytes = {bad}\n") == \
            f"control.max_request_bytes: expected an integer from 256 to 16777216, got {bad}"


def test_unknown_enum_values(tmp_path):
    assert error(tmp_path, '[log]\nformat = "xml"\n') == \
        'log.format: expected one of "auto", "console", "json", got "xml"'
    assert error(tmp_path, '[log]\nlevel = "trace"\n').startswith('log.level: expected one of "debug"')
    assert error(tmp_path, '[jobs]\nrestart = "sometimes"\n').startswith(
        'jobs.restart: expected one of "no", "on-failure", "always"')


def test_unknown_key(tmp_path):
    assert error(tmp_path, '[daemon]\njobsdir = "x"\n') == "unknown key daemon.jobsdir"


def test_unknown_table(tmp_path):
    assert error(tmp_path, "[deamon]\nwatchdog = false\n") == "unknown table deamon"


def test_unknown_top_level_key(tmp_path):
    assert error(tmp_path, "verbose = true\n") == "unknown key verbose"


def test_a_section_that_is_not_a_table(tmp_path):
    assert error(tmp_path, "daemon = 1\n") == "daemon: expected a table, got 1"


def test_enabled_and_config_exist_only_per_job(tmp_path):
    assert error(tmp_path, "[jobs]\nenabled = false\n") == "unknown key jobs.enabled"


# --- the control socket's access ---

def test_mode_is_parsed_as_octal(tmp_path):
    assert load(tmp_path, '[control]\nmode = "0600"\n').socket_mode == 0o600
    assert load(tmp_path, '[control]\nmode = "750"\n').socket_mode == 0o750


def test_mode_given_as_a_number(tmp_path):
    assert error(tmp_path, "[control]\nmode = 432\n") == \
        'control.mode: expected an octal string like "0660", got 432'


def test_mode_strings_that_are_not_octal(tmp_path):
    for bad in ("0x1b0", "0690", "rw-rw----", "00660", "66", ""):
        assert error(tmp_path, f'[control]\nmode = "{bad}"\n').startswith(
            'control.mode: expected an octal string like "0660"'), bad


def test_mode_granting_anything_to_other_is_rejected(tmp_path):
    for bad in ("0664", "0661", "0602", "0777"):
        message = error(tmp_path, f'[control]\nmode = "{bad}"\n')
        assert message.startswith(f'control.mode: "{bad}" grants access to other users'), message


def test_allowed_users_by_name_and_by_number(tmp_path):
    user = other_user()
    users = f'["root", "{user.pw_name}", 123456, "654321"]'
    for key in ("read_users", "control_users", "allowed_users"):
        config = load(tmp_path, f"[control]\n{key} = {users}\n")
        assert getattr(config, key.replace("allowed", "control")) == \
            (0, user.pw_uid, 123456, 654321)


def test_allowed_users_are_deduplicated_in_order(tmp_path):
    config = load(tmp_path, '[control]\nallowed_users = [5000, "root", 0, "5000"]\n')
    assert config.control_users == (5000, 0)
    config = load(tmp_path, '[control]\nread_users = [5000, "root", 0, "5000"]\n')
    assert config.read_users == (5000, 0)


def test_unknown_user(tmp_path):
    assert error(tmp_path, '[control]\nallowed_users = ["root", "no-such-user-x9"]\n') == \
        'control.allowed_users: unknown user "no-such-user-x9"'


def test_allowed_users_of_the_wrong_type(tmp_path):
    for bad in ('"root"', "[1.5]", "[-1]", '[""]', "[true]"):
        assert error(tmp_path, f"[control]\nallowed_users = {bad}\n") == \
            f"control.allowed_users: expected a list of user names or uids, got {bad}"


def test_allowed_group_by_name_and_by_number(tmp_path):
    group = other_group()
    for key in ("read_group", "control_group", "allowed_group"):
        field = key.replace("allowed", "control")
        by_name = load(tmp_path, f'[control]\n{key} = "{group.gr_name}"\n')
        assert getattr(by_name, field) == group.gr_gid
        assert getattr(load(tmp_path, f"[control]\n{key} = 4242\n"), field) == 4242
        assert getattr(load(tmp_path, f'[control]\n{key} = "4243"\n'), field) == 4243
        assert getattr(load(tmp_path, f'[control]\n{key} = ""\n'), field) is None


def test_unknown_group(tmp_path):
    assert error(tmp_path, '[control]\nallowed_group = "no-such-group-x9"\n') == \
        'control.allowed_group: unknown group "no-such-group-x9"'


def test_allowed_group_of_the_wrong_type(tmp_path):
    for bad in ("-1", "true", '["wheel"]'):
        assert error(tmp_path, f"[control]\nallowed_group = {bad}\n") == \
            f"control.allowed_group: expected a group name or gid, got {bad}"


# --- jobs ---

def test_per_job_overrides_merge_with_the_defaults(tmp_path):
    config = load(tmp_path, """
        [jobs]
        restart = "always"
        restart_delay = 2
        [job.backup]
        restart_delay = 5
        enabled = false
    """)
    backup = config.job_policy("backup")
    assert backup == dataclasses.replace(config.job_defaults, restart_delay=5.0, enabled=False)
    assert backup.restart == "always"
    assert config.job_policy("other") == config.job_defaults
    assert config.job_defaults.restart_delay == 2.0 and config.job_defaults.enabled


def test_job_config_table_is_passed_through(tmp_path):
    config = load(tmp_path, """
        [job.web.config]
        url = "http://localhost"
        retries = 3
        anything_at_all = [1, "two"]
        [job.web.config.nested]
        deep = true
    """)
    assert config.job_policy("web").config == {
        "url": "http://localhost", "retries": 3, "anything_at_all": [1, "two"],
        "nested": {"deep": True}}
    assert config.job_policy("web").restart == "on-failure"
    assert config.job_policy("other").config == {}


def test_job_config_is_a_fresh_copy_for_each_start(tmp_path):
    config = load(tmp_path, "[job.web.config]\nseen = []\n")
    config.job_policy("web").config["seen"].append(1)
    config.job_policy("other").config["x"] = 1
    assert config.job_policy("web").config == {"seen": []}
    assert config.job_policy("other").config == {}


def test_unknown_key_in_a_job_table(tmp_path):
    assert error(tmp_path, '[job.backup]\nrestrat = "always"\n') == "unknown key job.backup.restrat"


def test_bad_value_in_a_job_table_names_the_job(tmp_path):
    assert error(tmp_path, '[job.backup]\nrestart_delay = "5"\n') == \
        'job.backup.restart_delay: expected a number >= 0, got "5"'
    assert error(tmp_path, '[job.backup]\nrestart = "never"\n').startswith(
        "job.backup.restart: expected one of")


def test_job_config_must_be_a_table(tmp_path):
    assert error(tmp_path, "[job.backup]\nconfig = 1\n") == \
        "job.backup.config: expected a table, got 1"


def test_job_entries_must_be_tables(tmp_path):
    assert error(tmp_path, "[job]\nbackup = 1\n") == "job.backup: expected a table, got 1"
    assert error(tmp_path, "job = 1\n").startswith("job: expected")


# --- the config file is trusted only when root or we alone can change it ---

OTHER_UID = 4242


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to another uid")
def test_config_file_of_another_user_is_refused(tmp_path):
    path = write(tmp_path, "")
    os.chown(path, OTHER_UID, -1)
    message = error_of_file(path)
    assert message == (f"{path}: refusing the config file: unsafe file {path} (owner uid "
                       f"{OTHER_UID}, mode 0644): owned by uid {OTHER_UID}, not by root "
                       f"(chown root {path})")


@pytest.mark.parametrize("mode", [0o664, 0o666, 0o602])
def test_group_or_other_writable_config_file_is_refused(tmp_path, mode):
    path = write(tmp_path, "")
    os.chmod(path, mode)
    assert f"unsafe file {path} (owner uid {os.geteuid()}, mode {mode:04o}): writable by" in \
        error_of_file(path)


def test_config_file_in_a_writable_folder_is_refused(tmp_path):
    path = write(tmp_path, "")
    os.chmod(path.parent, 0o777)
    assert f"unsafe folder {path.parent} " in error_of_file(path)


def test_strict_modes_off_does_not_excuse_the_config_file_itself(tmp_path):
    path = write(tmp_path, "[daemon]\nstrict_modes = false\n")
    os.chmod(path, 0o666)  # anyone could have written that switch
    assert "writable by its group and others" in error_of_file(path)


def test_config_read_through_a_safe_symlink(tmp_path):
    target = write(tmp_path, '[log]\nlevel = "error"\n', "real/coschedd.toml")
    link = tmp_path / "coschedd.toml"
    link.symlink_to(target)
    assert load_config(link, environ={}).log_level == "error"


def error_of_file(path: Path) -> str:
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, environ={})
    return str(excinfo.value)


# --- access and limits ---

def test_old_and_new_name_of_a_key_together_are_refused(tmp_path):
    assert error(tmp_path, "[control]\nallowed_users = [1]\ncontrol_users = [2]\n") == \
        "control.allowed_users is the old name of control.control_users; set only " \
        "control.control_users"
    assert error(tmp_path, '[control]\nallowed_group = 1\ncontrol_group = ""\n').startswith(
        "control.allowed_group is the old name of control.control_group")


def test_old_names_are_read_with_a_warning_for_the_log(tmp_path):
    config = load(tmp_path, "[control]\nallowed_users = [7]\nallowed_group = 8\n")
    assert (config.control_users, config.control_group) == ((7,), 8)
    assert config.warnings == (
        "control.allowed_users is an old name; it is read as control.control_users",
        "control.allowed_group is an old name; it is read as control.control_group")


def test_shipped_file_mentions_the_old_names():
    text = REPO_CONFIG.read_text()
    assert "# allowed_users: the old name of control_users" in text
    assert "# allowed_group: the old name of control_group" in text


def test_per_user_quota_must_stay_below_the_unreserved_connections(tmp_path):
    assert error(tmp_path, "[control]\nmax_connections = 16\nmax_connections_per_user = 12\n") \
        == ("control.max_connections_per_user: 12 must be below control.max_connections (16) "
            "minus the 4 connections kept for root and the daemon's user")
    assert load(tmp_path, "[control]\nmax_connections = 16\nmax_connections_per_user = 11\n") \
        .max_connections_per_user == 11


def test_connection_limits_ranges(tmp_path):
    assert error(tmp_path, "[control]\nmax_connections = 7\n") == \
        "control.max_connections: expected an integer from 8 to 65536, got 7"
    assert error(tmp_path, "[control]\nmax_connections_per_user = 0\n") == \
        "control.max_connections_per_user: expected an integer from 1 to 65536, got 0"
    assert error(tmp_path, "[control]\nidle_timeout = 0\n") == \
        "control.idle_timeout: expected a number > 0, got 0"


def test_a_mode_that_keeps_out_the_one_configured_group(tmp_path):
    for key in ("read_group", "control_group"):
        message = error(tmp_path, f'[control]\nmode = "0600"\n{key} = 4242\n')
        assert message.startswith('control.mode: "0600" keeps out the group'), message
    # two different groups: the socket is world-connectable, its group bits do not matter
    config = load(tmp_path, '[control]\nmode = "0600"\nread_group = 1\ncontrol_group = 2\n')
    assert (config.read_group, config.control_group) == (1, 2)


def test_strict_modes_must_be_a_boolean(tmp_path):
    assert error(tmp_path, '[daemon]\nstrict_modes = "no"\n') == \
        'daemon.strict_modes: expected true or false, got "no"'


# --- the state folder, the history and timed jobs ---

def test_state_dir_in_the_file_wins_then_systemd_then_root_then_xdg(tmp_path, monkeypatch):
    assert load(tmp_path, '[daemon]\nstate_dir = "st"\n', STATE_DIRECTORY="/var/lib/x").state_dir \
        == tmp_path / "etc" / "st"
    assert load(tmp_path, "", STATE_DIRECTORY="/var/lib/cosched:/var/lib/other").state_dir == \
        Path("/var/lib/cosched")
    xdg = tmp_path / "home" / ".local" / "state"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert load(tmp_path, "", XDG_STATE_HOME=str(xdg)).state_dir == Path("/var/lib/cosched")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert load(tmp_path, "", XDG_STATE_HOME=str(xdg)).state_dir == xdg / "cosched"
    assert load(tmp_path, "").state_dir == tmp_path / ".state"


def test_the_repositorys_config_keeps_its_state_in_the_repository_even_for_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert load_config(REPO_CONFIG, environ={}).state_dir == REPO_CONFIG.parent.parent / ".state"


def test_history_keys(tmp_path):
    config = load(tmp_path, "[history]\nrecord = false\nmax_rows = 5000\nmax_age_days = 0\n")
    assert (config.history, config.history_rows, config.history_days) == (False, 5000, 0.0)
    assert "history.max_rows: expected an integer from 1000" in error(
        tmp_path, "[history]\nmax_rows = 10\n")


def test_timed_job_keys(tmp_path):
    config = load(tmp_path, '[jobs]\noverlap = "queue"\ncatch_up = true\n'
                            '[job.a]\nschedule = "*/5 * * * *"\ntimezone = "Europe/Berlin"\n'
                            '[job.b]\nevery = "1h30m"\noverlap = "allow"\n[job.c]\nevery = 2.5\n')
    a, b, c = (config.jobs[n] for n in "abc")
    assert (a.schedule, a.every, a.timezone, a.overlap, a.catch_up, a.timed) == (
        "*/5 * * * *", None, "Europe/Berlin", "queue", True, True)
    assert (b.every, b.overlap, b.schedule, c.every) == (5400.0, "allow", "", 2.5)
    assert not config.job_defaults.timed and config.job_defaults.overlap == "queue"


@pytest.mark.parametrize("table, message", [
    ('schedule = "* * *"', "job.x.schedule: '* * *' is not a cron expression: it needs 5 fields"),
    ('schedule = "0 25 * * *"', "job.x.schedule: '0 25 * * *' is not a cron expression: bad "
                                "hour field"),
    ("every = 0", "job.x.every: 0 is not more than 0 seconds; an interval must be"),
    ("every = -3", "job.x.every: -3 is not more than 0 seconds"),
    ('every = "-1m"', "job.x.every: '-1m' is not more than 0 seconds"),
    ('every = "often"', "job.x.every: 'often' is not an interval"),
    ("every = true", "job.x.every: expected a duration > 0, got true"),
    ('timezone = "Moon/Base"', "job.x.timezone: unknown time zone 'Moon/Base'"),
    ('overlap = "maybe"', 'job.x.overlap: expected one of "skip", "queue", "allow"'),
    ('every = "5s"\nschedule = "* * * * *"', "job.x: set schedule or every, not both"),
])
def test_bad_timed_job_keys_name_the_job_and_key(tmp_path, table, message):
    assert error(tmp_path, f"[job.x]\n{table}\n").startswith(message)


def test_schedule_and_every_exist_only_per_job(tmp_path):
    assert error(tmp_path, '[jobs]\nevery = "5s"\n') == "unknown key jobs.every"
