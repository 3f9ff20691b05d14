"""A throwaway Unix user with a NOPASSWD sudoers.d entry, for tests against the real sudo.

    reason = skip_reason()            # None when the machine allows it (root, sudo, useradd, visudo, setpriv)
    with throwaway_user() as u:       # useradd -m; /etc/sudoers.d/<name> checked with visudo -cf
        p = u.run(["sudo", "-n", "/usr/bin/env"], env=u.env(HF_HOME="/data/hf"))
        with u.sudoers_defaults('Defaults:%s env_keep += "HF_HOME"' % u.name):
            ...                       # an extra sudoers.d file, checked, removed on exit
    # user, home, mail spool, sudoers files and sudo's lecture/timestamp records are gone here

Commands run as the user through `setpriv --reuid --regid --init-groups` (argv only, the
environment exactly as given, nothing added). The project interpreter may live where the user
cannot go (a venv under /root); `user_python()` returns an interpreter and environment the user
can run the project's code with, or None.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

ROOT = Path(__file__).resolve().parents[2]
SUDOERS_D = Path("/etc/sudoers.d")
TOOLS = ("sudo", "useradd", "userdel", "visudo", "setpriv")


def _tool(name: str) -> Optional[str]:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}", f"/sbin/{name}")
                                       if os.access(p, os.X_OK)), None)


def skip_reason() -> Optional[str]:
    """Why real-sudo tests cannot run here, or None."""
    if os.getuid() != 0:
        return "needs root to create a throwaway user and a sudoers.d entry"
    missing = [t for t in TOOLS if _tool(t) is None]
    if missing:
        return f"needs {', '.join(missing)} (apt-get install sudo util-linux passwd)"
    if not SUDOERS_D.is_dir():
        return f"{SUDOERS_D} does not exist (is sudo installed?)"
    try:
        include = Path("/etc/sudoers").read_text()
    except OSError as e:
        return f"cannot read /etc/sudoers: {e.strerror}"
    if "includedir /etc/sudoers.d" not in include:
        return "/etc/sudoers does not include /etc/sudoers.d"
    return None


def check_sudoers(path: str | os.PathLike) -> subprocess.CompletedProcess:
    """`visudo -cf PATH`: the syntax check every sudoers file we write goes through."""
    return subprocess.run([_tool("visudo"), "-cf", str(path)], capture_output=True, text=True, timeout=30)


def install_sudoers(name: str, text: str) -> Path:
    """Write /etc/sudoers.d/NAME (0440) only after `visudo -cf` accepted it in a scratch file."""
    if "." in name or "~" in name:
        raise ValueError(f"sudo ignores sudoers.d files whose name contains '.' or '~': {name}")
    target = SUDOERS_D / name
    scratch = SUDOERS_D / f".{name}.check"  # a dot-name is ignored by sudo while being checked
    scratch.write_text(text)
    try:
        os.chmod(scratch, 0o440)
        check = check_sudoers(scratch)
        if check.returncode != 0:
            raise ValueError(f"visudo rejects {text!r}: {check.stdout}{check.stderr}")
        os.replace(scratch, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            scratch.unlink()
    return target


@dataclass
class SudoUser:
    """A created user: name, uid, gid, home; its sudoers.d file."""

    name: str
    uid: int
    gid: int
    home: str
    sudoers: Path

    def env(self, base: Optional[Mapping[str, str]] = None, **extra: str) -> dict:
        """A login-like environment for the user (HOME, USER, LOGNAME, SHELL, PATH, LANG) plus `extra`."""
        env = dict(base) if base is not None else {
            "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": os.environ.get("LANG", "C.UTF-8"),
            "SHELL": "/bin/sh"}
        env.update(HOME=self.home, USER=self.name, LOGNAME=self.name)
        env.update(extra)
        return env

    def argv(self, argv: Sequence[str]) -> list:
        """`argv` prefixed so that it runs as this user."""
        return [_tool("setpriv"), f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--", *argv]

    def run(self, argv: Sequence[str], env: Optional[Mapping[str, str]] = None, *, timeout: float = 60,
            cwd: Optional[str] = None, input: Optional[str] = None) -> subprocess.CompletedProcess:
        """Run `argv` as this user with exactly `env` (default: `self.env()`), capturing text output."""
        return subprocess.run(self.argv(argv), env=dict(self.env() if env is None else env), cwd=cwd or self.home,
                              input=input, capture_output=True, text=True, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)

    @contextlib.contextmanager
    def sudoers_defaults(self, *lines: str) -> Iterator[Path]:
        """An extra sudoers.d file with `lines` (checked with visudo -cf), removed on exit."""
        path = install_sudoers(f"{self.name}-extra", "\n".join(lines) + "\n")
        try:
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def mkdir(self, *parts: str) -> Path:
        """A folder under the user's home, owned by the user."""
        path = Path(self.home, *parts)
        path.mkdir(parents=True, exist_ok=True)
        for p in [path, *path.parents]:
            if str(p) == self.home:
                break
            os.chown(p, self.uid, self.gid)
        return path


@contextlib.contextmanager
def throwaway_user(rule: str = "ALL=(ALL) NOPASSWD: ALL", prefix: str = "mpf") -> Iterator[SudoUser]:
    """Create a user (`useradd -m`) with `NAME rule` in /etc/sudoers.d/NAME; remove all of it afterwards."""
    reason = skip_reason()
    if reason:
        raise RuntimeError(reason)
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    subprocess.run([_tool("useradd"), "-m", "-s", "/bin/sh", name], check=True, capture_output=True, timeout=30)
    sudoers = SUDOERS_D / name
    try:
        pw = pwd.getpwnam(name)
        if rule:
            sudoers = install_sudoers(name, f"{name} {rule}\n")
        yield SudoUser(name=name, uid=pw.pw_uid, gid=pw.pw_gid, home=pw.pw_dir, sudoers=sudoers)
    finally:
        for f in (sudoers, SUDOERS_D / f"{name}-extra"):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
        subprocess.run([_tool("userdel"), "-r", "-f", name], capture_output=True, timeout=30)
        for leftover in (Path("/var/lib/sudo/lectured") / name, Path("/run/sudo/ts") / name):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def user_python(user: SudoUser) -> Optional[tuple]:
    """(interpreter, extra environment) with which `user` can import the project, or None.

    The project interpreter first; if the user may not reach it (a venv whose base interpreter sits
    under /root), a system python3 of the same minor version with our site-packages on PYTHONPATH.
    """
    import sysconfig

    probe = "import doctor.cli, rich, psutil, huggingface_hub; print('ok')"
    site = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    candidates = [(sys.executable, {})]
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(cand, os.X_OK) and os.path.realpath(cand) != os.path.realpath(sys.executable):
            candidates.append((cand, {"PYTHONPATH": os.pathsep.join([str(ROOT), *dict.fromkeys(site)])}))
    for python, extra in candidates:
        try:
            p = user.run([python, "-c", f"import sys; assert sys.version_info[:2] == {tuple(sys.version_info[:2])}; "
                                        + probe], env=user.env(**extra), cwd=str(ROOT), timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if p.returncode == 0 and p.stdout.strip().endswith("ok"):
            return python, extra
    return None
