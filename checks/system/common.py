"""What the system checks share: their memo, finding and command helpers, the launch environment
and the launch user's groups.
"""
from __future__ import annotations

import os
import re
import stat
import subprocess
import threading
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple

from core.commands import quote
from core.model import Finding
from core.secrets import mask_text


GROUP = "system"
GIB = 1024 ** 3
MIB = 1024 ** 2
TOOL_TIMEOUT = 5.0          # perf --version, perf list, perf stat
_SECRET_ARG = re.compile(r"(--?[\w-]*(?:token|key|secret|passw(?:or)?d)[\w-]*)(=|\s+)(\S+)", re.IGNORECASE)


_memo_lock = threading.Lock()


def _memo(ctx, name: str, compute):
    """`compute()` once per doctor run, shared by the checks that need it (they run concurrently)."""
    with _memo_lock:
        slot = ctx.__dict__.setdefault("_system_memo", {}).setdefault(name, {"lock": threading.Lock()})
    with slot["lock"]:
        if "value" not in slot:
            slot["value"] = compute()
        return slot["value"]


def _q(*words) -> str:
    """`quote` for words that may be paths."""
    return quote(*map(str, words))


def _finding(fid: str, status: str, title: str, detail: str = "", fix: Sequence[str] = (),
             experiments: Iterable[str] = (), **data) -> Finding:
    return Finding(id=fid, group=GROUP, status=status, title=title, detail=detail, fix=tuple(fix),
                   experiments=tuple(dict.fromkeys(experiments)), data=data)


def _all_ids(ctx) -> Tuple[str, ...]:
    return tuple(e.id for e in ctx.plan.experiments)


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def _distro() -> str:
    """`debian`, `ubuntu`, ... from /etc/os-release (ID, else the first of ID_LIKE)."""
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            info = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
    except OSError:
        return ""
    ids = [info.get("ID", "").strip('"')] + info.get("ID_LIKE", "").strip('"').split()
    return next((i for i in ids if i in ("ubuntu", "debian", "fedora", "rhel", "arch")), ids[0])


def _install(package_by_distro: Mapping[str, str]) -> str:
    d = _distro()
    if d in ("fedora", "rhel"):
        return f"sudo dnf install -y {package_by_distro.get(d, package_by_distro['debian'])}"
    if d == "arch":
        return f"sudo pacman -S --noconfirm {package_by_distro.get(d, package_by_distro['debian'])}"
    return f"sudo apt-get install -y {package_by_distro.get(d, package_by_distro['debian'])}"


def _run(argv: Sequence[str], env: Optional[Mapping[str, str]] = None, timeout: float = TOOL_TIMEOUT,
         **kw) -> Tuple[Optional[int], str, str]:
    """(returncode, stdout, stderr); returncode None on timeout or when it cannot start."""
    try:
        p = subprocess.run(list(argv), env=None if env is None else dict(env), capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL, **kw)
    except subprocess.TimeoutExpired:
        return None, "", f"no answer within {timeout:g} s"
    except OSError as e:
        return None, "", f"cannot run {argv[0]}: {e.strerror}"
    return p.returncode, p.stdout, p.stderr


def _launch_env(ctx) -> Dict[str, str]:
    env = dict(ctx.launch.env)
    env.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
    env.setdefault("HOME", ctx.launch.home)
    return env


def _launch_user_groups(ctx) -> Tuple[int, ...]:
    try:
        return tuple(os.getgrouplist(ctx.launch.user, ctx.launch.gid))
    except (KeyError, OSError):
        return (ctx.launch.gid,)


def _writable_by(st: os.stat_result, uid: int, gids: Sequence[int]) -> bool:
    """Unix permission bits only: may `uid` (in groups `gids`) write an entry with this status?"""
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IWUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IWGRP)
    return bool(st.st_mode & stat.S_IWOTH)


def _mask_cmdline(text: str, env: Mapping[str, str]) -> str:
    return mask_text(_SECRET_ARG.sub(lambda m: m.group(1) + m.group(2) + "***", text), env)


def _short(text: str, n: int = 160) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _version_tuple(text: str) -> Tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text or "")[:2])
