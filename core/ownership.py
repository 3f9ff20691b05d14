"""Giving files created as root back to the user who typed `sudo`.

A batch started with `sudo mutation-run ...` runs as root, so every file its experiments write
(downloaded weights in the user's caches, checkpoints in the repos, the results folder) is
root-owned and the user can no longer delete or overwrite it without sudo. `give_back()` walks the
folders a run may have written to and hands root-owned entries back to the invoking user.

Only entries owned by root are touched, each through a descriptor opened without following links
on the very inode that was judged; links are changed themselves (never their targets); a file with
more than one link is never given away. `snapshot()` records every inode before a run: with it
as `before`, only what the run created changes owner, and folders that existed before (the
user's home, a shared results folder, anything a planted link leads to) never do. Files the run
writes itself go through core.safefs, which gives back what it creates as it creates it.
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


Snapshot = FrozenSet[Tuple[int, int]]
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _ancestors_of(root: str) -> List[str]:
    out, p = [], os.path.dirname(root)
    while True:
        out.append(p)
        if p == "/":
            return out
        p = os.path.dirname(p)


def snapshot(paths_or_roots: PathsOrRoots, below: bool = True) -> Snapshot:
    """The (st_dev, st_ino) of every entry under the roots (`below=False`: not those) and of
    every folder above them now: pass it as `before=` and all of them stay as they are."""
    out = set()
    for root in _roots(paths_or_roots):
        for p in [*_ancestors_of(root), *([root] if below else [])]:
            try:
                st = os.stat(p)
                out.add((st.st_dev, st.st_ino))
            except OSError:
                continue
        for p in _walk(root) if below else ():
            try:
                st = os.lstat(p)
                out.add((st.st_dev, st.st_ino))
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


@dataclass(frozen=True)
class _Rule:
    """Which root-owned entries are the run's: not in `before` (by inode), status changed at or
    after `since`; folders only when `before` proves they are new."""

    before: Optional[Snapshot]
    since: Optional[float]

    def why_not(self, st: os.stat_result) -> Optional[str]:
        """None when the entry may be given back, else a short reason ("" to skip silently)."""
        if st.st_uid != 0:
            return ""
        if self.before is not None and (st.st_dev, st.st_ino) in self.before:
            return ""
        if self.since is not None and st.st_ctime < self.since - 1.0:  # a second of clock slack
            return ""
        if stat.S_ISDIR(st.st_mode):
            return None if self.before is not None else ""
        if stat.S_ISREG(st.st_mode) and st.st_nlink != 1:
            return f"has {st.st_nlink} links (one may be a file that was root's before); left root's"
        return None if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode) else ""


class _Giver:
    """Gives entries to uid:gid through descriptors on the very inode that was judged."""

    def __init__(self, uid: int, gid: int, rule: _Rule):
        self.uid, self.gid, self.rule = uid, gid, rule
        self.changed: List[str] = []
        self.failed: List[Tuple[str, str]] = []
        self.seen: set = set()

    def entry(self, path: str, name: str, dir_fd: Optional[int]) -> None:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return
        if (st.st_dev, st.st_ino) in self.seen:
            return
        self.seen.add((st.st_dev, st.st_ino))
        why = self.rule.why_not(st)
        if why is None and stat.S_ISLNK(st.st_mode):
            why = self._link(name, dir_fd)
        elif why is None:
            why = self._by_fd(name, dir_fd, st)
        if why is None:
            self.changed.append(path)
        elif why:
            self.failed.append((path, why))

    def _link(self, name: str, dir_fd: Optional[int]) -> Optional[str]:
        """A link is changed itself, and only inside a folder the user cannot write to now (so the
        name cannot be swapped between the look and the change); else it stays root's."""
        try:
            parent = os.fstat(dir_fd) if dir_fd is not None else os.stat(os.path.dirname(name))
        except OSError as e:
            return e.strerror or str(e)
        if parent.st_uid != 0 or parent.st_mode & 0o022:
            return ""
        try:
            os.chown(name, self.uid, self.gid, dir_fd=dir_fd, follow_symlinks=False)
            return None
        except OSError as e:
            return e.strerror or str(e)

    def _by_fd(self, name: str, dir_fd: Optional[int], st: os.stat_result) -> Optional[str]:
        try:
            fd = os.open(name, _DIR if stat.S_ISDIR(st.st_mode) else _FILE, dir_fd=dir_fd)
        except OSError as e:
            return e.strerror or str(e)
        try:
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or self.rule.why_not(now) is not None:
                return "changed while being looked at; left as it is"
            os.fchown(fd, self.uid, self.gid)
            return None
        except OSError as e:
            return e.strerror or str(e)
        finally:
            os.close(fd)

    def tree(self, root: str) -> None:
        """Everything below `root` (children before their folder), then `root` itself; no link is
        followed below the root."""
        try:
            if not stat.S_ISDIR(os.lstat(root).st_mode):
                self.entry(root, root, None)
                return
        except OSError:
            return
        for dirpath, dirnames, filenames, dfd in os.fwalk(root, topdown=False, follow_symlinks=False):
            for name in filenames + dirnames:
                self.entry(os.path.join(dirpath, name), name, dfd)
        self.entry(root, root, None)


def give_back(paths_or_roots: PathsOrRoots, uid: int, gid: int, since: Optional[float] = None,
              before: Optional[Snapshot] = None, within: Optional[str] = None) -> GiveBack:
    """Give root-owned entries the run created under each root to `uid:gid`; returns what changed.

    `before`: a `snapshot()` taken before the run: entries in it (by inode) are left alone, and
    only with it are folders given back (a folder that existed before is never given away, even
    when the run changed its status by creating something in it). `since` (a time.time()
    value): only entries whose status changed at or after it. `within` (usually the user's home):
    folders between it and a root that the run created are given back too. A file with more than
    one link is never given back (a hard link to a file that was root's would hand that file
    over); links are changed themselves, never their targets; nothing below a root is reached
    through a link. Never raises for a single entry: failures are listed in the result.
    """
    roots = _roots(paths_or_roots)
    if uid in (0, -1) or uid is None:
        return GiveBack(roots=tuple(roots))
    giver = _Giver(uid, gid, _Rule(before, since))
    for root in roots:
        giver.tree(root)
        for p in _ancestors(root, within):
            giver.entry(p, p, None)
    return GiveBack(changed=tuple(giver.changed), failed=tuple(giver.failed), roots=tuple(roots))


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
