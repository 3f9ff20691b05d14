"""Giving files created as root back to the user who typed `sudo`.

A batch started with `sudo mutation-run ...` runs as root, so every file its experiments write
(downloaded weights in the user's caches, checkpoints in the repos, the results folder) is
root-owned and the user can no longer delete or overwrite it without sudo. `give_back()` walks the
folders a run may have written to and hands root-owned entries back to the invoking user.

Only entries owned by root are touched, symlinks are changed themselves (never their targets), and
with `since` only entries whose status changed at or after that time, so root-owned files that
existed before the run stay as they were. `snapshot()` records root-owned entries before a run
for an exact "created by this run" test.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import FrozenSet, Iterable, List, Optional, Tuple, Union

PathsOrRoots = Union[str, os.PathLike, Iterable[Union[str, os.PathLike]]]


@dataclass(frozen=True)
class GiveBack:
    """What `give_back()` did: the entries chowned and those it could not change (with the reason)."""

    changed: Tuple[str, ...] = ()
    failed: Tuple[Tuple[str, str], ...] = ()
    roots: Tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.changed)


def _roots(paths_or_roots: PathsOrRoots) -> List[str]:
    if isinstance(paths_or_roots, (str, os.PathLike)):
        paths_or_roots = [paths_or_roots]
    out = []
    for p in paths_or_roots:
        p = os.path.abspath(os.fspath(p))
        if p not in out:
            out.append(p)
    return out


def _walk(root: str) -> Iterable[str]:
    """The root and everything below it, without following symlinks to folders."""
    try:
        st = os.lstat(root)
    except OSError:
        return
    yield root
    if not stat.S_ISDIR(st.st_mode):
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=lambda e: None):
        for name in dirnames + filenames:
            yield os.path.join(dirpath, name)


def snapshot(paths_or_roots: PathsOrRoots) -> FrozenSet[str]:
    """Root-owned entries under the roots now (pass it as `before=` to leave them alone later)."""
    out = set()
    for root in _roots(paths_or_roots):
        for p in _walk(root):
            try:
                if os.lstat(p).st_uid == 0:
                    out.add(p)
            except OSError:
                continue
    return frozenset(out)


def _ancestors(root: str, stop: Optional[str]) -> List[str]:
    """Folders between `stop` (excluded) and `root` (excluded), nearest first."""
    if not stop:
        return []
    stop = os.path.abspath(stop).rstrip("/") or "/"
    out, p = [], os.path.dirname(root)
    while p.startswith(stop + "/") and p != stop:
        out.append(p)
        p = os.path.dirname(p)
    return out


def give_back(paths_or_roots: PathsOrRoots, uid: int, gid: int, since: Optional[float] = None,
              before: Optional[FrozenSet[str]] = None, within: Optional[str] = None) -> GiveBack:
    """Chown root-owned entries under each root to `uid:gid`; returns what changed.

    `since` (a time.time() value): only entries whose ctime is at or after it (created or changed
    by the run). `before`: a `snapshot()` taken before the run; entries in it are left alone.
    `within` (usually the user's home): folders between it and a root that the run created
    (`~/.cache` and `~/.cache/huggingface` when it created `~/.cache/huggingface/hub`) are
    given back too. Missing roots are skipped; nothing is followed through symlinks.
    Never raises for a single entry: failures are listed in the result.
    """
    changed: List[str] = []
    failed: List[Tuple[str, str]] = []
    roots = _roots(paths_or_roots)
    if uid in (0, -1) or uid is None:
        return GiveBack(roots=tuple(roots))
    slack = 1.0  # ctime granularity and clock steps: a second earlier still counts as "during the run"
    candidates: List[str] = []
    for root in roots:
        candidates.extend(reversed(_ancestors(root, within)))
        candidates.extend(_walk(root))
    seen = set()
    for p in candidates:
        if p in seen:
            continue
        seen.add(p)
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if st.st_uid != 0 or (before is not None and p in before):
            continue
        if since is not None and st.st_ctime < since - slack:
            continue
        try:
            os.lchown(p, uid, gid)
            changed.append(p)
        except OSError as e:
            failed.append((p, e.strerror or str(e)))
    return GiveBack(changed=tuple(changed), failed=tuple(failed), roots=tuple(roots))


def sudo_owner(env=None) -> Optional[Tuple[int, int, str, str]]:
    """(uid, gid, user, home) of the user who ran `sudo`, when this process is root under sudo."""
    import pwd

    env = os.environ if env is None else env
    if os.getuid() != 0 or not env.get("SUDO_UID"):
        return None
    try:
        uid = int(env["SUDO_UID"])
    except ValueError:
        return None
    if uid == 0:
        return None
    try:
        pw = pwd.getpwuid(uid)
        gid = int(env.get("SUDO_GID") or pw.pw_gid)
        return uid, gid, pw.pw_name, pw.pw_dir
    except (KeyError, ValueError):
        gid = int(env.get("SUDO_GID") or uid)
        return uid, gid, env.get("SUDO_USER", str(uid)), ""
