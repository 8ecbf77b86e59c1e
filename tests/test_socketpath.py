"""Tests of cosched.socketpath: coschedctl finds the socket where the daemon's
configuration puts it, reading only the two keys that decide it."""

import os
from pathlib import Path

import pytest

from cosched import socketpath
from cosched.config import load_config
from cosched.strictmodes import Untrusted

FILES = [
    "",
    '[daemon]\nruntime_dir = "/srv/state"\n',
    '[daemon]\nruntime_dir = "../run"\njobs_dir = "j"\n',
    '[control]\nsocket = "ctl.sock"\nmode = "0600"\n',
    '[control]\nsocket = "/var/run/x/c.sock"\n[daemon]\nruntime_dir = "r"\n',
    '[log]\nlevel = "debug"\n[job.ticker]\nconfig = { every = 5 }\n',
]
ENVIRONMENTS = [
    {},
    {"XDG_RUNTIME_DIR": "/run/user/1000"},
    {"RUNTIME_DIRECTORY": "/run/cosched:/run/other", "XDG_RUNTIME_DIR": "/run/user/1000"},
    {"RUNTIME_DIRECTORY": "", "XDG_RUNTIME_DIR": ""},
    {"COSCHED_DAEMON_RUNTIME_DIR": "/env/run"},
    {"COSCHED_CONTROL_SOCKET": "env.sock", "XDG_RUNTIME_DIR": "/run/user/5"},
    {"COSCHED_CONTROL_SOCKET": ""},
]


@pytest.mark.parametrize("environ", ENVIRONMENTS)
@pytest.mark.parametrize("text", FILES)
def test_the_socket_is_where_the_daemons_configuration_puts_it(tmp_path, text, environ):
    path = tmp_path / "etc" / "coschedd.toml"
    path.parent.mkdir()
    path.write_text(text)
    expected = os.fspath(load_config(path, environ=environ).socket)
    assert socketpath.from_config(environ, os.fspath(path)) == expected
    assert socketpath.from_config({**environ, "COSCHED_CONFIG": os.fspath(path)}) == expected


def test_the_default_config_file_is_cosched_config_else_the_systems_else_the_repositorys():
    assert socketpath.config_path({"COSCHED_CONFIG": "/x/c.toml"}) == "/x/c.toml"
    expected = (socketpath.SYSTEM_CONFIG if os.path.exists(socketpath.SYSTEM_CONFIG)
                else socketpath.REPO_CONFIG)
    assert socketpath.config_path({"COSCHED_CONFIG": ""}) == expected
    assert Path(socketpath.REPO_CONFIG) == Path(__file__).resolve().parent.parent / "config" / "coschedd.toml"


@pytest.mark.parametrize("text, error", [
    ('[control]\nsocket = 5\n', "control.socket: expected a string"),
    ('[daemon]\nruntime_dir = ["a"]\n', "daemon.runtime_dir: expected a string"),
    ("daemon = 3\n", "daemon.runtime_dir: expected a string"),
    ('[control\n', "Expected ']'"),
])
def test_a_file_coschedd_would_refuse_names_no_socket(tmp_path, text, error):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=error.replace("[", r"\[").replace("]", r"\]")):
        socketpath.from_config({}, os.fspath(path))


def test_a_file_others_could_change_is_not_trusted(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[control]\nsocket = "/elsewhere.sock"\n')
    path.chmod(0o666)
    with pytest.raises(Untrusted):
        socketpath.from_config({}, os.fspath(path))
    with pytest.raises(FileNotFoundError):
        socketpath.from_config({}, os.fspath(tmp_path / "missing.toml"))
