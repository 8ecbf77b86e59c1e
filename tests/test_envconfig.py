"""Configuration from COSCHED_<SECTION>_<KEY> variables: types, precedence, bad values."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from cosched.config import SCHEMA, ConfigError, load_config
from cosched.envconfig import OTHER_VARIABLES, variable
from test_daemon import BASE_CONFIG, COSCHEDCTL, COSCHEDD, SLEEPER, WAIT, render_toml, write_job


def load(tmp_path, text: str, **env: str):
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    path = etc / "coschedd.toml"
    path.write_text(text)
    return load_config(path, environ=env)


def test_every_type_of_key_from_the_environment(tmp_path):
    config = load(tmp_path, '[log]\nformat = "console"\n[daemon]\nstop_timeout = 3\n',
                  COSCHED_LOG_FORMAT="json", COSCHED_DAEMON_STOP_TIMEOUT="7.5",
                  COSCHED_DAEMON_WATCHDOG="no", COSCHED_DAEMON_WORKER_THREADS="4",
                  COSCHED_CONTROL_READ_USERS="root, 1234", COSCHED_CONTROL_MODE="0600",
                  COSCHED_METRICS_LISTEN="0.0.0.0:9469", COSCHED_LOG_STREAM="stdout",
                  COSCHED_JOBS_AUTOSTART="off", COSCHED_DAEMON_JOBS_DIR="/srv/jobs")
    assert config.log_format == "json"          # the variable wins over the file
    assert config.stop_timeout == 7.5 and config.watchdog is False
    assert config.worker_threads == 4 and config.read_users == (0, 1234)
    assert config.socket_mode == 0o600 and config.metrics_listen == ("0.0.0.0", 9469)
    assert config.log_stream == "stdout" and config.job_defaults.autostart is False
    assert str(config.jobs_dir) == "/srv/jobs"
    assert config.warnings == ()


def test_keys_the_environment_does_not_set_keep_the_files_values(tmp_path):
    config = load(tmp_path, '[daemon]\nstop_timeout = 3\n', COSCHED_LOG_LEVEL="debug")
    assert (config.stop_timeout, config.log_level) == (3.0, "debug")


@pytest.mark.parametrize("name, value, message", [
    ("COSCHED_DAEMON_STOP_TIMEOUT", "abc", "COSCHED_DAEMON_STOP_TIMEOUT='abc': expected a "
                                            "number >= 0"),
    ("COSCHED_DAEMON_STOP_TIMEOUT", "-1", "COSCHED_DAEMON_STOP_TIMEOUT: expected a number >= 0, "
                                           "got -1.0"),
    ("COSCHED_DAEMON_STOP_TIMEOUT", "nan", "COSCHED_DAEMON_STOP_TIMEOUT: expected a number"),
    ("COSCHED_DAEMON_WORKER_THREADS", "2.5", "COSCHED_DAEMON_WORKER_THREADS='2.5': expected an "
                                             "integer from 1 to 1024"),
    ("COSCHED_DAEMON_WORKER_THREADS", "0", "COSCHED_DAEMON_WORKER_THREADS: expected an integer "
                                           "from 1 to 1024, got 0"),
    ("COSCHED_DAEMON_WATCHDOG", "maybe", "COSCHED_DAEMON_WATCHDOG='maybe': expected true or "
                                         "false"),
    ("COSCHED_LOG_FORMAT", "xml", 'COSCHED_LOG_FORMAT: expected one of "auto", "console", '
                                  '"json", got "xml"'),
    ("COSCHED_METRICS_LISTEN", "localhost:1", "COSCHED_METRICS_LISTEN: \"localhost:1\": "
                                              "expected HOST:PORT with HOST an IP address"),
    ("COSCHED_CONTROL_READ_USERS", "nosuchuser-xyz", 'COSCHED_CONTROL_READ_USERS: unknown user '
                                                    '"nosuchuser-xyz"'),
])
def test_bad_values_are_errors_naming_the_variable(tmp_path, name, value, message):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "", **{name: value})
    assert str(info.value).startswith(message), str(info.value)


def test_unknown_variables_are_reported_not_ignored_silently(tmp_path):
    config = load(tmp_path, "", COSCHED_DAEMON_STOP_TIMOUT="3", COSCHED_DEAMON_X="1",
                  COSCHED_SOCKET="/x", COSCHED_CONFIG="/y")
    assert config.warnings == (
        "COSCHED_DAEMON_STOP_TIMOUT: [daemon] has no such key (it has "
        + ", ".join(variable("daemon", k) for k in SCHEMA["daemon"]) + "); ignored",
        "COSCHED_DEAMON_X is not a cosched variable (config keys are COSCHED_<SECTION>_<KEY> "
        "with SECTION one of " + ", ".join(s.upper() for s in SCHEMA) + "); ignored")
    assert {"COSCHED_SOCKET", "COSCHED_CONFIG"} <= OTHER_VARIABLES


def test_every_key_has_a_variable_and_the_shipped_file_says_so():
    from cosched.config import REPO_CONFIG
    assert "COSCHED_<SECTION>_<KEY>" in REPO_CONFIG.read_text()
    names = [variable(s, k) for s, keys in SCHEMA.items() for k in keys]
    assert len(set(names)) == len(names)   # no two keys share a variable


def _start(tmp_path, env: dict) -> subprocess.Popen:
    write_job(tmp_path / "jobs", "sleeper", SLEEPER)
    config = tmp_path / "coschedd.toml"
    config.write_text(render_toml({k: v for k, v in BASE_CONFIG.items() if k != "log"}))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("COSCHED_")}
    return subprocess.Popen([COSCHEDD, "--config", str(config)], env={**environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, cwd=tmp_path)


def test_a_daemon_configured_by_its_environment_logs_json_on_stdout(tmp_path):
    proc = _start(tmp_path, {"COSCHED_LOG_FORMAT": "json", "COSCHED_LOG_STREAM": "stdout"})
    try:
        sock = tmp_path / "run" / "coschedd.sock"
        for _ in range(int(WAIT / 0.05)):
            ping = subprocess.run([COSCHEDCTL, "--socket", str(sock), "ping"],
                                  capture_output=True, timeout=WAIT)
            if ping.returncode == 0 or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert ping.returncode == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0 and err == b""
    events = [json.loads(line)["event"] for line in out.splitlines()]
    assert "coschedd ready" in events and "coschedd stopped" in events


def test_a_bad_variable_stops_the_daemon_with_exit_2(tmp_path):
    proc = _start(tmp_path, {"COSCHED_DAEMON_STOP_TIMEOUT": "soon"})
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 2
    assert err.decode() == ("coschedd: configuration error: COSCHED_DAEMON_STOP_TIMEOUT='soon': "
                            "expected a number >= 0\n")
