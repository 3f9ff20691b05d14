"""core.launch and core.sudo without the real sudo: --launch parsing, sudo's rules as simulated
(each case measured on sudo 1.9.13; tests/test_sudo.py compares them with sudo itself), parsing of
`sudo -l` / `sudo -V`, and the need-state probe protocol run for real in a subprocess."""
import dataclasses
import io
import json
import pwd
import sys

import pytest

from core import hubcache, sudo
from core.launch import (SECURE_PATH, LaunchSpec, LaunchSpecError, build_launch_context, invoking_environment,
                           parse_launch, simulate_sudo)

CALLER = pwd.struct_passwd(("u", "x", 1000, 1000, "", "/home/u", "/bin/zsh"))
ROOT = pwd.struct_passwd(("root", "x", 0, 0, "root", "/root", "/bin/bash"))

# `sudo -n -l` of a user with an env_keep line in sudoers.d (the Defaults line wraps when short)
SUDO_L = """Matching Defaults entries for u on vm:
    env_reset, mail_badpass,
    secure_path=/usr/local/sbin\\:/usr/local/bin\\:/usr/sbin\\:/usr/bin\\:/sbin\\:/bin,
    use_pty, env_keep+="HF_HOME HF_HUB_OFFLINE"

User u may run the following commands on vm:
    (ALL) NOPASSWD: ALL
"""
SUDO_V = """Sudo version 1.9.13p3
Environment variables to check for safety:
\tTZ
\tTERM
\tLC_*
Environment variables to remove:
\t*=()*
\tPYTHONPATH
\tLD_*
Environment variables to preserve:
\tPATH
\tDISPLAY
Locale to use while parsing sudoers: C
"""


def test_parse_launch():
    assert parse_launch("sudo-E") == parse_launch("sudo -E") == LaunchSpec("sudo-E")
    assert parse_launch("current") == parse_launch("") == LaunchSpec("current")
    assert parse_launch("sudo --preserve-env=HF_HOME,HF_HUB_OFFLINE").preserve == ("HF_HOME", "HF_HUB_OFFLINE")
    assert parse_launch("sudo --preserve-env=A,B").label == "sudo --preserve-env=A,B"
    for bad in ("su", "sudo -i", "sudo -u bob"):
        with pytest.raises(LaunchSpecError):
            parse_launch(bad)


def test_plain_sudo_as_measured():
    env = {"HOME": "/home/u", "PATH": "/home/u/venv/bin:/usr/bin", "HF_HOME": "/data/hf", "TZ": "Europe/Paris",
           "LC_ALL": "a/b", "LC_CTYPE": "C.UTF-8", "LANG": "C.UTF-8", "COLORTERM": "truecolor", "DISPLAY": ":0",
           "SHELL": "/bin/zsh", "MAIL": "/m", "USER": "u", "TERM": "xterm 256", "LD_LIBRARY_PATH": "/opt/cuda"}
    out = simulate_sudo(env, parse_launch("sudo"), CALLER, ROOT)
    assert out == {"HOME": "/root", "PATH": SECURE_PATH, "TZ": "Europe/Paris", "LC_CTYPE": "C.UTF-8", "LANG": "C.UTF-8",
                   "COLORTERM": "truecolor", "DISPLAY": ":0", "SHELL": "/bin/bash", "MAIL": "/var/mail/root",
                   "USER": "root", "LOGNAME": "root", "TERM": "xterm 256", "SUDO_USER": "u", "SUDO_UID": "1000",
                   "SUDO_GID": "1000"}


def test_sudo_E_and_preserve_env_as_measured():
    env = {"HOME": "/home/u", "PATH": "/p", "HF_HOME": "/data/hf", "PYTHONPATH": "/pp", "TMPDIR": "/t",
           "LD_LIBRARY_PATH": "/l", "TZ": "/etc/x", "BASH_FUNC_f%%": "() { :; }", "MAIL": "/m"}
    e = simulate_sudo(env, parse_launch("sudo -E"), CALLER, ROOT)
    assert e == {"HOME": "/home/u", "PATH": SECURE_PATH, "HF_HOME": "/data/hf", "MAIL": "/m", "SHELL": "/bin/bash",
                 "USER": "root", "LOGNAME": "root", "TERM": "unknown", "SUDO_USER": "u", "SUDO_UID": "1000",
                 "SUDO_GID": "1000"}
    p = simulate_sudo(env, parse_launch("sudo --preserve-env=HF_HOME,PATH,HOME,PYTHONPATH,TMPDIR,LD_LIBRARY_PATH"),
                      CALLER, ROOT)
    # preserved as given, even PATH (over secure_path) and PYTHONPATH; TMPDIR, LD_* never reach sudo
    assert (p["HF_HOME"], p["PATH"], p["HOME"], p["PYTHONPATH"]) == ("/data/hf", "/p", "/home/u", "/pp")
    assert "TMPDIR" not in p and "LD_LIBRARY_PATH" not in p and p["MAIL"] == "/var/mail/root"


def test_parse_sudo_list_and_version():
    d = sudo.parse_sudo_list(SUDO_L)
    assert d.env_reset and d.setenv and d.secure_path == SECURE_PATH
    assert d.added_keep == ("HF_HOME", "HF_HUB_OFFLINE")
    assert d.rules == ("(ALL) NOPASSWD: ALL",)
    assert "use_pty" in d.entries
    out = simulate_sudo({"HF_HOME": "/d", "HF_HUB_OFFLINE": "1", "TORCH_HOME": "/t"}, parse_launch("sudo"),
                        CALLER, ROOT, defaults=d)
    assert out["HF_HOME"] == "/d" and out["HF_HUB_OFFLINE"] == "1" and "TORCH_HOME" not in out
    v = sudo.parse_sudo_version(SUDO_V)
    assert v == {"env_check": ("TZ", "TERM", "LC_*"), "env_delete": ("PYTHONPATH", "LD_*"), "env_keep": ("PATH", "DISPLAY")}
    d = sudo.parse_sudo_list("Matching Defaults entries for u on h:\n    !env_reset, !secure_path, "
                             'env_keep="A B", env_keep-="B"\n\nUser u may run the following commands on h:\n'
                             "    (root) NOPASSWD: /usr/bin/env\n", v)
    assert (d.env_reset, d.secure_path, d.env_keep, d.setenv) == (False, "", ("A",), False)


def test_build_launch_context_simulated_and_says_why(monkeypatch):
    env = {"HOME": "/home/u", "PATH": "/usr/bin", "HF_HOME": "/d"}
    ctx = build_launch_context("sudo", environ=env, ask_sudo=False)
    assert ctx.source == "simulated" and ctx.home == pwd.getpwuid(0).pw_dir and "HF_HOME" not in ctx.env
    assert "the real sudo was not asked" in ctx.notes[0] and ctx.invoking_env == env
    monkeypatch.setenv("MUTATION_DOCTOR_ASK_SUDO", "0")
    assert build_launch_context("sudo -E", environ=env).source == "simulated"
    assert build_launch_context("sudo -E", environ=env).env["HF_HOME"] == "/d"


def test_invoking_environment_outside_sudo_is_empty(monkeypatch):
    monkeypatch.delenv("SUDO_UID", raising=False)
    assert invoking_environment() == {}


def test_needstate_probe_answers_like_local_inspection(tmp_path):
    """The probe protocol, run for real in a subprocess (no sudo prefix): same FileStates as here."""
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "resnet18-f37072fd.pth").write_bytes(b"x" * 10)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.csv").write_text("1\n")
    tasks = [("torch", str(tmp_path / "hub"), "resnet18-f37072fd.pth"), ("torch", str(tmp_path / "hub"), "nope.pth"),
             ("hf", str(tmp_path / "hf"), "org/tiny", "config.json", "main"), ("path", str(tmp_path / "data"), "dataset"),
             ("python", sys.executable)]
    states, why = sudo.inspect_as(tasks, prefix=())
    assert why == "" and states == [sudo.inspect_task(t) for t in tasks]
    assert [s.status for s in states] == ["present", "missing", "missing", "present", "present"]
    out = io.StringIO()
    assert sudo.probe_main(io.StringIO(json.dumps({"tasks": [["bogus", "/x"]]})), out) == 0
    assert json.loads(out.getvalue())["states"][0]["status"] == "unknown"
    assert sudo.needstate_argv(("sudo", "-n"))[:4] == ["sudo", "-n", sys.executable, "-I"]
    assert isinstance(states[0], hubcache.FileState) and dataclasses.asdict(states[0])["size"] == 10
