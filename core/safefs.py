"""File operations done as root on a user's behalf, and bounded reads that never block.

Running under `sudo`, the runner and the doctor write into folders the invoking user controls.
Every such write goes through a `SafeTree` (or `open_log` for a process's output): everything
below the root is reached one component at a time with `O_NOFOLLOW | O_DIRECTORY` relative to a
directory descriptor (no path resolved twice); files and folders are created with `O_EXCL` /
mkdir-at (a planted name is refused, never written through); a file is appended to only when
this process created it; what was created is recorded by (st_dev, st_ino) and only that is given
back, through a descriptor on that very inode; files with two links and folders that existed
before are never given away. What cannot be done safely is said in one line and skipped.
`read_regular()` is the reading side: no blocking on a FIFO, regular files only, bounded.
"""
from __future__ import annotations

import errno
import os
import stat
import threading
from dataclasses import dataclass
from typing import BinaryIO, Callable, Dict, List, Optional, Tuple

READ_LIMIT = 64 * 1024 * 1024  # what read_regular reads at most unless told otherwise

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_PEEK = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


_CREATED: set = set()  # (st_dev, st_ino) of everything any SafeTree of this process created
_CREATED_LOCK = threading.Lock()


class UnsafeWrite(OSError):
    """Raised by open_log when the write would not be safe (its message says why, in one line)."""


class NotRegularFile(OSError):
    """Raised by read_regular/open_regular for a FIFO, device, socket or folder (an OSError, so
    readers that already handle unreadable files handle this too)."""


@dataclass(frozen=True)
class Owner:
    """The user files are given back to."""

    uid: int
    gid: int


@dataclass(frozen=True)
class Created:
    """One entry this tree created: where (relative to the root), which inode, file or folder."""

    relpath: str
    dev: int
    ino: int
    is_dir: bool


@dataclass(frozen=True)
class Refusal:
    """Something the tree would not do: the path and why, as one line."""

    path: str
    reason: str

    def line(self) -> str:
        return f"not writing {self.path}: {self.reason}"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str, dir_fd: Optional[int] = None, follow: bool = True) -> BinaryIO:
    """`path` opened for reading when it is a regular file; NotRegularFile otherwise. The open
    does not block on a FIFO (O_NONBLOCK, then fstat). `follow=False` also refuses a final link."""
    flags = _PEEK if not follow else _PEEK & ~os.O_NOFOLLOW
    fd = os.open(path, flags, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(errno.EINVAL, f"{_kind(st.st_mode)}, not a regular file", path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str, limit: int = READ_LIMIT, dir_fd: Optional[int] = None, follow: bool = True) -> bytes:
    """At most `limit` bytes of a regular file; NotRegularFile for a FIFO, device or folder,
    OSError when it cannot be read. Never blocks on a FIFO."""
    with open_regular(path, dir_fd=dir_fd, follow=follow) as f:
        return f.read(limit)


def _parts(relpath: str) -> List[str]:
    parts = [p for p in relpath.split("/") if p not in ("", ".")]
    if relpath.startswith("/") or ".." in parts:
        raise ValueError(f"not a path inside the tree: {relpath!r}")
    return parts


class SafeTree:
    """A folder written on a user's behalf; see the module docstring for the rules.

    `root` is opened (created, with its missing parents, when `create`) once. When `owner` is set
    (acting for a user while root), a link on the way to `root` is followed only when root owns
    it, and everything the tree creates is given to `owner` at once, through its descriptor
    (`hold=True`: only when `give_back()` is called). `say` receives each refusal as one line.
    """

    def __init__(self, root: str, owner: Optional[Owner] = None, *, create: bool = True,
                 say: Optional[Callable[[str], None]] = None, hold: bool = False):
        self.root = os.path.abspath(os.fspath(root))
        self.owner = owner if owner is not None and owner.uid not in (0, -1) else None
        self.say, self.hold = say, hold
        self.created: List[Created] = []
        self.refused: List[Refusal] = []
        self.given: List[str] = []
        self._lock = threading.Lock()
        self._mine: Dict[Tuple[int, int], Created] = {}
        self._given: set = set()
        self.fd: Optional[int] = self._open_root(create)

    # -- the root ----------------------------------------------------------------------------------
    def _open_root(self, create: bool) -> Optional[int]:
        """Walk from / to the root one component at a time; a link is followed (its target walked
        the same way) only when root owns it, or when the tree acts for nobody."""
        todo = [p for p in self.root.split("/") if p]
        fd, walked, hops = os.open("/", _DIR), "/", 0
        try:
            while todo:
                name = todo.pop(0)
                if name == "..":
                    nxt, walked = os.open("..", _DIR, dir_fd=fd), os.path.dirname(walked)
                else:
                    nxt = self._step(fd, walked, name, create)
                    if isinstance(nxt, str):  # a link we may follow: walk its target instead
                        hops += 1
                        if hops > 40:
                            raise _Refused(f"too many links on the way to {self.root}")
                        todo[:0] = [p for p in nxt.split("/") if p and p != "."]
                        if nxt.startswith("/"):
                            os.close(fd)
                            fd, walked = os.open("/", _DIR), "/"
                        continue
                    walked = os.path.join(walked, name)
                os.close(fd)
                fd = nxt
            return fd
        except _Refused as r:
            os.close(fd)
            self._refuse(self.root, str(r))
            return None

    def _step(self, fd: int, walked: str, name: str, create: bool):
        """The descriptor of `name` in `fd` (created when missing and `create`), or the target of a
        link that may be followed (a str)."""
        here = os.path.join(walked, name)
        try:
            return os.open(name, _DIR, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise _Refused(f"{here} does not exist")
            return self._mkdir_at(fd, name, here)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise _Refused(f"cannot open {here}: {e.strerror}")
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            raise _Refused(f"{here} is {_kind(st.st_mode)}, not a folder")
        if self.owner is not None and st.st_uid != 0:
            raise _Refused(f"{here} is a link owned by uid {st.st_uid}; give the real folder "
                           f"({os.path.realpath(here)}) instead")
        return os.readlink(name, dir_fd=fd)

    # -- walking below the root ---------------------------------------------------------------------
    def _dir(self, parts: List[str], create: bool) -> int:
        """A new descriptor of the folder root/parts (created when missing and `create`)."""
        if self.fd is None:
            raise _Refused(f"{self.root} could not be opened safely")
        fd = os.dup(self.fd)
        try:
            for i, name in enumerate(parts):
                try:
                    nxt = os.open(name, _DIR, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise _Refused(f"{self._path(parts[:i + 1])} does not exist")
                    nxt = self._mkdir_at(fd, name, "/".join(parts[:i + 1]))
                except OSError as e:
                    raise _Refused(self._why(fd, name, parts[:i + 1], e))
                os.close(fd)
                fd = nxt
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _why(self, fd: int, name: str, parts: List[str], e: OSError) -> str:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            return f"{self._path(parts)} is {_kind(st.st_mode)}, not a folder this run may write into"
        except OSError:
            return f"cannot open {self._path(parts)}: {e.strerror}"

    def _mkdir_at(self, fd: int, name: str, path: str) -> int:
        """mkdir-at `name` in `fd` and open it; recorded as created (and given back) when this call
        made it. `path`: absolute, or relative to the root."""
        try:
            os.mkdir(name, 0o755, dir_fd=fd)
            made = True
        except FileExistsError:
            made = False  # made meanwhile by someone else: opened like any existing folder, not ours
        except OSError as e:
            raise _Refused(f"cannot create {self._path([path])}: {e.strerror}")
        try:
            nfd = os.open(name, _DIR, dir_fd=fd)
        except OSError as e:
            raise _Refused(f"cannot open {self._path([path])}: {e.strerror}")
        if made:
            self._record(nfd, path, True, now=path.startswith("/"))
        return nfd

    def _path(self, parts) -> str:
        return os.path.join(self.root, *parts)

    def _record(self, fd: int, relpath: str, is_dir: bool, now: bool = False) -> None:
        """Remember a created inode; give it back at once unless held (folders made on the way to
        the root are always given at once: `give_back()` walks from the root only)."""
        st = os.fstat(fd)
        c = Created(relpath, st.st_dev, st.st_ino, is_dir)
        with self._lock:
            self.created.append(c)
            self._mine[(st.st_dev, st.st_ino)] = c
        with _CREATED_LOCK:
            _CREATED.add((st.st_dev, st.st_ino))
        if now or not self.hold:
            self._give_fd(fd, c)

    def _refuse(self, path: str, reason: str) -> None:
        r = Refusal(path, reason)
        with self._lock:
            self.refused.append(r)
        if self.say is not None:
            self.say(r.line())

    # -- the API -------------------------------------------------------------------------------------
    def mkdirs(self, relpath: str) -> bool:
        """Make sure root/relpath is a folder (created as needed, links refused); False when refused."""
        try:
            os.close(self._dir(_parts(relpath), True))
            return True
        except _Refused as r:
            self._refuse(self._path(_parts(relpath)), str(r))
            return False

    def mkdir_new(self, name: str) -> bool:
        """Make the folder root/name, which must not exist yet (False when it does); OSError when
        it cannot be made."""
        if self.fd is None or not name or "/" in name or name in (".", ".."):
            raise OSError(errno.EINVAL, f"cannot make {name!r} in {self.root}")
        try:
            os.mkdir(name, 0o755, dir_fd=self.fd)
        except FileExistsError:
            return False
        fd = os.open(name, _DIR, dir_fd=self.fd)
        try:
            self._record(fd, name, True)
        finally:
            os.close(fd)
        return True

    def _parent(self, parts: List[str]) -> Optional[int]:
        """A descriptor of the folder that will hold root/parts (made as needed), or None (refused)."""
        if not parts:
            raise ValueError("a file name is needed")
        try:
            return self._dir(parts[:-1], True)
        except _Refused as r:
            self._refuse(self._path(parts), str(r))
            return None

    def open_new(self, relpath: str, mode: int = 0o644, *, quiet: bool = False,
                 sync_dir: bool = False) -> Optional[BinaryIO]:
        """A new file (O_EXCL: nothing of that name may exist, a planted link included) open for
        writing, or None when refused (`quiet`: an existing name is not reported). `sync_dir`:
        the folder is fsync'ed so the new name survives a power cut."""
        parts = _parts(relpath)
        dfd = self._parent(parts)
        if dfd is None:
            return None
        try:
            fd = os.open(parts[-1], _NEW, mode, dir_fd=dfd)
            if sync_dir:
                os.fsync(dfd)
        except OSError as e:
            if not (quiet and e.errno == errno.EEXIST):
                why = "it already exists (a file or link this run did not create)" if e.errno == errno.EEXIST else e.strerror
                self._refuse(self._path(parts), why)
            return None
        finally:
            os.close(dfd)
        self._record(fd, "/".join(parts), False)
        return os.fdopen(fd, "wb")

    def write_new(self, relpath: str, data: bytes) -> bool:
        """Create root/relpath with `data` (O_EXCL); False when refused."""
        f = self.open_new(relpath)
        if f is not None:
            with f:
                f.write(data)
        return f is not None

    def append_own(self, relpath: str) -> Optional[BinaryIO]:
        """root/relpath open for appending when this tree created it (the same inode);
        a new file when it does not exist; None (refused) otherwise."""
        parts = _parts(relpath)
        dfd = self._parent(parts)
        if dfd is None:
            return None
        try:
            try:
                fd = os.open(parts[-1], os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             dir_fd=dfd)
            except FileNotFoundError:
                os.close(dfd)
                dfd = -1
                return self.open_new(relpath)
            except OSError as e:
                self._refuse(self._path(parts), f"cannot open it safely: {e.strerror}")
                return None
        finally:
            if dfd >= 0:
                os.close(dfd)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) not in self._mine or not stat.S_ISREG(st.st_mode):
            os.close(fd)
            self._refuse(self._path(parts), "this run did not create it; not appending to it")
            return None
        os.set_blocking(fd, True)
        return os.fdopen(fd, "ab")

    def replace(self, relpath: str, data: bytes, durable: bool = True) -> bool:
        """Atomically put `data` at root/relpath: a new temporary file (O_EXCL) in the verified
        folder, then a rename inside that same folder descriptor. False when refused."""
        parts = _parts(relpath)
        dfd = self._parent(parts)
        if dfd is None:
            return False
        tmp = f".{parts[-1]}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            try:
                fd = os.open(tmp, _NEW, 0o644, dir_fd=dfd)
            except OSError as e:
                self._refuse(self._path(parts), f"cannot create a temporary file: {e.strerror}")
                return False
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    if durable:
                        os.fsync(f.fileno())
                    self._record(f.fileno(), "/".join(parts), False)
                os.rename(tmp, parts[-1], src_dir_fd=dfd, dst_dir_fd=dfd)
            except OSError as e:
                _unlink_quietly(tmp, dfd)
                if e.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                    self._refuse(self._path(parts), "a folder is in the way")
                    return False
                raise
            return True
        finally:
            os.close(dfd)

    def give_back(self) -> List[str]:
        """Give every recorded entry not yet given back to the owner (with `hold=True`), each
        through a descriptor opened without following links and checked to be the recorded
        inode. Returns the paths changed by this call."""
        if self.owner is None:
            return []
        before = len(self.given)
        for c in list(self.created):
            if (c.dev, c.ino) in self._given or c.relpath.startswith("/"):
                continue
            parts = _parts(c.relpath)
            try:
                dfd = self._dir(parts[:-1], False)
            except _Refused:
                continue
            try:
                fd = os.open(parts[-1], _DIR if c.is_dir else _PEEK, dir_fd=dfd)
            except OSError:
                continue
            finally:
                os.close(dfd)
            try:
                self._give_fd(fd, c)
            finally:
                os.close(fd)
        return self.given[before:]

    def _give_fd(self, fd: int, c: Created) -> None:
        if self.owner is None:
            return
        path = self._path([c.relpath])
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (c.dev, c.ino):
            self._refuse(path, "it was replaced since this run created it; its owner is left as it is")
            return
        if not c.is_dir and st.st_nlink != 1:
            self._refuse(path, f"it has {st.st_nlink} links; its owner is left as it is")
            return
        try:
            os.fchown(fd, self.owner.uid, self.owner.gid)
            self.given.append(path)
            self._given.add((c.dev, c.ino))
        except OSError as e:
            self._refuse(path, f"cannot give it to uid {self.owner.uid}: {e.strerror}")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "SafeTree":
        return self

    def __exit__(self, *exc) -> None:
        self.close()



def write_file(path: str, data: bytes) -> Optional[str]:
    """Put `data` at `path` as a new file renamed into place inside a verified folder (a report asked
    for on the command line, possibly by root in a user's folder): a link planted at `path` is
    replaced, never written through. Returns None when written, else the one-line reason."""
    refused: List[str] = []
    full = os.path.abspath(path)
    with SafeTree(os.path.dirname(full), create=False, say=refused.append) as tree:
        if tree.fd is None or not tree.replace(os.path.basename(full), data):
            return refused[0] if refused else f"{path}: cannot write it here"
    return None


def _trusted_folder(fd: int) -> bool:
    """May this process create names in the folder open at `fd`? Always when not root (it gains
    nothing); as root, when a SafeTree of this process created the folder, or when only root may
    write to it."""
    st = os.fstat(fd)
    if os.geteuid() != 0:
        return True
    return (st.st_dev, st.st_ino) in _CREATED or (st.st_uid == 0 and not st.st_mode & 0o022)


def open_log(path: str, append: bool = False) -> BinaryIO:
    """A log file open for writing at `path`, for a process's output.

    New (`append=False`, or nothing there yet): a temporary file made with O_EXCL in the folder,
    renamed over the name (whatever was planted there, a link or a hard link, is replaced, never
    written through); as root only in a folder this process created or only root may write to.
    `append=True` on an existing file: only when this process created that very file. Raises
    UnsafeWrite (one line) otherwise."""
    folder, name = os.path.split(os.path.abspath(path))
    try:
        dfd = os.open(folder, _DIR)
    except OSError as e:
        raise UnsafeWrite(e.errno or errno.EPERM, f"cannot open the folder of {path}: {e.strerror}") from None
    try:
        if append:
            f = _append_created(dfd, name, path)
            if f is not None:
                return f
        if not _trusted_folder(dfd):
            raise UnsafeWrite(errno.EPERM, f"not writing {path}: its folder was not made by this run and "
                                           "others may write to it")
        tmp = f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        fd = os.open(tmp, _NEW, 0o644, dir_fd=dfd)
        try:
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError as e:
            os.close(fd)
            _unlink_quietly(tmp, dfd)
            raise UnsafeWrite(e.errno or errno.EPERM, f"not writing {path}: {e.strerror}") from None
        st = os.fstat(fd)
        with _CREATED_LOCK:
            _CREATED.add((st.st_dev, st.st_ino))
        return os.fdopen(fd, "ab" if append else "wb")
    finally:
        os.close(dfd)


def _append_created(dfd: int, name: str, path: str) -> Optional[BinaryIO]:
    """`name` open for appending when this process created it; None when it does not exist."""
    try:
        fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UnsafeWrite(e.errno or errno.EPERM, f"not appending to {path}: {e.strerror}") from None
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and (os.geteuid() != 0 or (st.st_dev, st.st_ino) in _CREATED):
        os.set_blocking(fd, True)
        return os.fdopen(fd, "ab")
    os.close(fd)
    raise UnsafeWrite(errno.EPERM, f"not appending to {path}: this run did not create it")


class _Refused(Exception):
    """Internal: the reason an operation was refused (turned into a Refusal line)."""


def _unlink_quietly(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass
