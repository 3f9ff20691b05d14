"""Helpers shared by the `system` group tests (no tests here).

`make_ctx()` builds a real DoctorContext from a registry and a settings dict written to disk and
read by the real loaders; `launch_for()` a LaunchContext for any user and environment;
`orphan()` starts a real process and reparents it to init by a double fork.
"""
from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Optional

import psutil
import pytest

from core.context import DoctorContext, Options
from core.model import LaunchContext
from core.plan import load_plan
from core.registry import load_registry

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = str(ROOT / ".venv" / "bin" / "python")


def repo(models, requires=None, path=None, **extra) -> dict:
    """One registry entry in the user's models_config.json format."""
    d = {"path": path or "repos/" + "_".join(models), "train_script": "./train.sh", "models": list(models),
         "supported_hyperparams": {"epochs": {"flag": "--epochs", "type": "int", "default": 1}}}
    if requires:
        d["requires"] = requires
    d.update(extra)
    return d


def launch_for(user: str = None, env: Optional[Mapping[str, str]] = None, invoking: str = None,
               cwd: str = "/") -> LaunchContext:
    """A launch context running as `user` (default: us) for the invoking user `invoking`."""
    pw = pwd.getpwnam(user) if user else pwd.getpwuid(os.getuid())
    inv = pwd.getpwnam(invoking) if invoking else pw
    env = dict(os.environ if env is None else env)
    env.setdefault("HOME", pw.pw_dir)
    return LaunchContext(how="current" if pw == inv else "sudo", source="self", env=env, user=pw.pw_name,
                         uid=pw.pw_uid, gid=pw.pw_gid, home=env["HOME"], cwd=cwd, invoking_user=inv.pw_name,
                         invoking_uid=inv.pw_uid, invoking_home=inv.pw_dir, invoking_env={})


def make_ctx(root: Path, models: dict, settings: dict, launch: LaunchContext = None, memo_dir: Path = None,
             timeout: float = 3.0, groups=("system",)) -> DoctorContext:
    """Write `models` (registry "models" object) and `settings` under `root`, load them for real."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "models_config.json").write_text(json.dumps({"models": models}))
    settings_file = root / "settings.json"
    settings_file.write_text(json.dumps(settings))
    registry = load_registry(str(root / "models_config.json"), str(root))
    plan = load_plan(str(settings_file), registry)
    for spec in registry.repos.values():
        os.makedirs(spec.path, exist_ok=True)
    options = Options(project_root=str(root), settings_file=str(settings_file), models_config=registry.path,
                      memo_dir=str(memo_dir or root / ".memo"), timeout=timeout, groups=tuple(groups))
    return DoctorContext(options=options, registry=registry, plan=plan, launch=launch or launch_for())


def settings(*entries, **top) -> dict:
    """A settings file: `entries` are (repo, model) pairs or full entry dicts."""
    exps = [e if isinstance(e, dict) else {"mode": "default", "repo": e[0], "model": e[1], "hyperparameters": {}}
            for e in entries]
    return {"experiment_name": "t", "runs_per_config": 1, **top, "experiments": exps}


def by_id(findings, fid: str) -> list:
    return [f for f in (findings or []) if f.id == fid]


def one(findings, fid: str):
    found = by_id(findings, fid)
    assert len(found) == 1, f"expected one {fid}, got {[f.id for f in (findings or [])]}"
    return found[0]


def as_list(result) -> list:
    if result is None:
        return []
    return [result] if not isinstance(result, list) else result


_ORPHAN = r"""
import os, sys, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    middle = os.getpid()
    if os.fork() == 0:
        while os.getppid() == middle:  # wait until the kernel has reparented us
            time.sleep(0.001)
        os.close(r)
        os.write(w, str(os.getpid()).encode())
        os.close(w)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # let go of the caller's pipes
            os.dup2(null, fd)
        os.execv(sys.argv[1], sys.argv[1:])
    os._exit(0)
os.close(w)
print(os.read(r, 32).decode(), flush=True)
"""


def orphan(*argv: str) -> psutil.Process:
    """Start `argv` as a real orphan: a double fork whose middle process exits, so the kernel
    reparents it to init (or the nearest child subreaper). The caller kills it."""
    p = subprocess.run([sys.executable, "-c", _ORPHAN, *argv], capture_output=True, text=True, timeout=10, check=True)
    proc = psutil.Process(int(p.stdout.strip()))
    for _ in range(500):  # the exec follows the pid report: wait until the command line is argv's
        if proc.cmdline()[:1] == [argv[0]]:
            break
        time.sleep(0.01)
    return proc


def gone(proc: psutil.Process, timeout: float = 5.0) -> bool:
    """The process has exited (a zombie waiting for init to reap it counts as exited)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def kill(proc: psutil.Process) -> None:
    try:
        proc.send_signal(signal.SIGKILL)
    except psutil.NoSuchProcess:
        return
    gone(proc)


@pytest.fixture(scope="module")
def throwaway_user():
    """A real, unprivileged user made for the test module with `useradd` and removed afterwards."""
    if os.getuid() != 0:
        pytest.skip("creating a throwaway user needs root")
    if shutil.which("useradd") is None:
        pytest.skip("useradd is not installed")
    name = f"mpf{os.getpid() % 100000}{secrets.token_hex(2)}"
    p = subprocess.run(["useradd", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                        "--user-group", name], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"useradd failed: {p.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True)
