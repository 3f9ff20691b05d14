"""Zero-network inspection of what is on disk: Hugging Face Hub cache entries, torch hub
checkpoints, local paths and interpreters.

Every function returns a FileState describing one file as a given user would find it; nothing
here downloads, prints or imports huggingface_hub or torch.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import threading
from dataclasses import dataclass
from typing import Optional, Tuple

from core.memo import JsonMemo
from core.safefs import NotRegularFile, open_regular, read_regular

PRESENT, MISSING, UNREADABLE, BROKEN = "present", "missing", "unreadable", "broken"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_TORCH_HASH = re.compile(r"-([a-f0-9]+)\.")
LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"
STAT_TIMEOUT = 5.0  # seconds a local path may take to answer a stat


@dataclass(frozen=True)
class FileState:
    """One needed file as found on disk.

    `status` is present, missing, unreadable (we may not look: permission) or broken (there but
    unusable: dangling link, truncated, hash mismatch, LFS pointer, empty). `problem` is a stable
    short id for broken or missing states (`dangling`, `no-ref`, `size-mismatch`, `hash-mismatch`,
    `lfs-pointer`, `empty`, `not-executable`, `no-exist-marker`); `path` is the path the launched
    process would open; `blob` the file behind it.
    """

    status: str
    path: str
    detail: str = ""
    problem: str = ""
    blob: str = ""
    size: Optional[int] = None
    leftovers: Tuple[str, ...] = ()

    @property
    def present(self) -> Optional[bool]:
        return None if self.status == UNREADABLE else self.status == PRESENT


class HashMemo(JsonMemo):
    """sha256 of files, memoised on (realpath, size, mtime) so a second run does not hash again."""

    def sha256(self, path: str) -> str:
        real = os.path.realpath(path)
        st = os.stat(real)
        key = f"{st.st_size}:{st.st_mtime_ns}"
        hit = self.get(real)
        if hit and hit[0] == key:
            return hit[1]
        with open_regular(real) as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        self.put(real, [key, digest])
        return digest


def _readable_dir(path: str) -> Optional[bool]:
    """True: a folder we can list; False: no such folder; None: we may not look (permission)."""
    try:
        os.listdir(path)
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    except PermissionError:
        return None


def repo_folder(cache_dir: str, repo_id: str, repo_type: str = "model") -> str:
    return os.path.join(cache_dir, f"{repo_type}s--" + repo_id.replace("/", "--"))


def _link_chain(path: str, limit: int = 8) -> Tuple[str, ...]:
    """The absolute paths a symlink passes through (the snapshot link, the repo blob, a shared blob...)."""
    chain = [path]
    for _ in range(limit):
        if not os.path.islink(chain[-1]):
            break
        target = os.readlink(chain[-1])
        chain.append(os.path.normpath(os.path.join(os.path.dirname(chain[-1]), target)))
    return tuple(chain)


def _expected_sha256(chain: Tuple[str, ...]) -> Optional[str]:
    for p in chain[1:]:
        name = os.path.basename(p)
        if _SHA256.match(name):
            return name
    return None


def _tree_size(folder: str, commit: str, filename: str) -> Optional[int]:
    try:
        info = json.loads(read_regular(os.path.join(folder, "trees", f"{commit}.json"), 64 * 1024 * 1024))
        info = info["files"][filename]
        return int(info.get("lfs_size") or info["size"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):  # a listing we cannot use
        return None


def _leftovers(folder: str) -> Tuple[str, ...]:
    try:
        return tuple(sorted(os.path.join(folder, "blobs", n) for n in os.listdir(os.path.join(folder, "blobs"))
                            if n.endswith(".incomplete")))
    except OSError:
        return ()


def inspect_hf_file(cache_dir: str, repo_id: str, filename: str, revision: str = "main",
                    repo_type: str = "model", verify: bool = False, memo: Optional[HashMemo] = None) -> FileState:
    """The state of `repo_id/filename@revision` in a Hugging Face Hub cache, without network.

    Follows the layout huggingface_hub writes: refs/<rev> -> snapshots/<sha>/<file> -> blobs/<etag>
    (-> shared store blob in 2.x). With `verify`, hashes LFS blobs (named by their sha256).
    """
    folder = repo_folder(cache_dir, repo_id, repo_type)
    for d in (cache_dir, folder):
        readable = _readable_dir(d)
        if readable is None:
            return FileState(UNREADABLE, d, detail=f"no permission to read {d}")
        if not readable:
            return FileState(MISSING, os.path.join(folder, "snapshots", "<commit>", filename),
                             detail=f"{repo_id} is not in {cache_dir}")
    leftovers = _leftovers(folder)
    if _COMMIT.match(revision):
        commit = revision
    else:
        ref = os.path.join(folder, "refs", revision)
        try:
            commit = read_regular(ref, 4096, follow=False).decode("utf-8", errors="replace").strip()
            if not _COMMIT.match(commit):  # never echoed: a ref that is not a commit id may be anything
                return FileState(BROKEN, ref, problem="bad-ref", leftovers=leftovers,
                                 detail=f"{ref} does not hold a commit id (40 hex digits)")
        except NotRegularFile as e:
            return FileState(BROKEN, ref, problem="not-a-file", leftovers=leftovers, detail=f"{ref} is {e.strerror}")
        except FileNotFoundError:
            return FileState(MISSING, ref, problem="no-ref", leftovers=leftovers,
                             detail=f"{repo_id}: no refs/{revision}, so revision {revision!r} cannot be resolved offline")
        except PermissionError:
            return FileState(UNREADABLE, ref, detail=f"no permission to read {ref}")
        except OSError as e:  # ELOOP: refs/<rev> is a link, which huggingface_hub never writes
            why = "is a link, which huggingface_hub never writes" if e.errno == errno.ELOOP else e.strerror
            return FileState(BROKEN, ref, problem="unreadable", leftovers=leftovers, detail=f"{ref}: {why}")
    snap = os.path.join(folder, "snapshots", commit, filename)
    hidden = _no_permission(snap)
    if hidden:
        return FileState(UNREADABLE, snap, leftovers=leftovers, detail=f"no permission to read {hidden}")
    if not os.path.lexists(snap):
        if os.path.exists(os.path.join(folder, ".no_exist", commit, filename)):
            return FileState(MISSING, snap, problem="no-exist-marker", leftovers=leftovers,
                             detail=f"the Hub said {filename} does not exist in {repo_id}@{commit[:8]}")
        return FileState(MISSING, snap, leftovers=leftovers, detail=f"{filename} is not in snapshot {commit[:8]} of {repo_id}")
    chain = _link_chain(snap)
    outside = _outside(snap, cache_dir)
    if outside:
        return FileState(BROKEN, snap, problem="outside-cache", blob=outside, leftovers=leftovers,
                         detail=f"{snap} points outside the cache, to {outside}; huggingface_hub never links there")
    if not os.path.exists(snap):
        return FileState(BROKEN, snap, problem="dangling", blob=chain[-1], leftovers=leftovers,
                         detail=f"{snap} points to {chain[-1]}, which does not exist")
    return _check_blob(snap, chain, _tree_size(folder, commit, filename), verify, memo, leftovers)


def _no_permission(path: str) -> str:
    """The first folder on the way to `path` (or `path` itself) we may not look into, or ""
    (a lookup that fails for lack of permission must not be taken for "missing" or "dangling")."""
    try:
        os.stat(path)
        return ""
    except PermissionError:
        pass
    except OSError:
        try:
            os.lstat(path)
            return ""
        except PermissionError:
            pass
        except OSError:
            return ""
    for start in (path, os.path.realpath(path)):  # the way to the link, then the way to its target
        p = start
        while p != os.path.dirname(p):
            parent = os.path.dirname(p)
            try:
                os.listdir(parent)
            except PermissionError:
                return parent
            except OSError:
                pass
            p = parent
    return path


def _outside(snap: str, cache_dir: str) -> str:
    """The file a snapshot link resolves to when that is outside the cache folder, else ""."""
    if not os.path.islink(snap):
        return ""
    real, cache = os.path.realpath(snap), os.path.realpath(cache_dir)
    return "" if real.startswith(cache.rstrip("/") + "/") else real


def _check_blob(path: str, chain: Tuple[str, ...], expected_size: Optional[int], verify: bool,
                memo: Optional[HashMemo], leftovers: Tuple[str, ...] = (), expected_prefix: str = "") -> FileState:
    blob = os.path.realpath(path)
    try:
        with open_regular(blob) as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(len(LFS_POINTER_PREFIX))
    except NotRegularFile as e:
        return FileState(BROKEN, path, blob=blob, problem="not-a-file", detail=f"{blob} is {e.strerror}")
    except PermissionError:
        return FileState(UNREADABLE, path, blob=blob, detail=f"no permission to read {blob}")
    except OSError as e:
        return FileState(BROKEN, path, blob=blob, problem="unreadable", detail=f"{blob}: {e.strerror}")
    if size == 0:
        return FileState(BROKEN, path, blob=blob, size=0, problem="empty", leftovers=leftovers, detail=f"{blob} is empty")
    if head == LFS_POINTER_PREFIX:
        return FileState(BROKEN, path, blob=blob, size=size, problem="lfs-pointer", leftovers=leftovers,
                         detail=f"{blob} is a Git LFS pointer, not the file (run `git lfs pull`)")
    if expected_size is not None and size != expected_size:
        return FileState(BROKEN, path, blob=blob, size=size, problem="size-mismatch", leftovers=leftovers,
                         detail=f"{blob} has {size} bytes, the Hub listing says {expected_size}")
    if verify and memo is not None:
        want = expected_prefix or _expected_sha256(chain)
        if want:
            got = memo.sha256(blob)
            if not got.startswith(want):
                return FileState(BROKEN, path, blob=blob, size=size, problem="hash-mismatch", leftovers=leftovers,
                                 detail=f"{blob}: sha256 {got[:16]}... does not match {want[:16]}...")
    return FileState(PRESENT, path, blob=blob, size=size, leftovers=leftovers)


def inspect_torch_checkpoint(hub_dir: str, filename: str, verify: bool = False,
                             memo: Optional[HashMemo] = None) -> FileState:
    """A torch.hub checkpoint (`<hub>/checkpoints/<file>`); with `verify`, the sha256 prefix in its name."""
    ckpt_dir = os.path.join(hub_dir, "checkpoints")
    path = os.path.join(ckpt_dir, filename)
    readable = _readable_dir(ckpt_dir)
    if readable is None:
        return FileState(UNREADABLE, path, detail=f"no permission to read {ckpt_dir}")
    if not os.path.lexists(path):
        partial = tuple(os.path.join(ckpt_dir, n) for n in _listdir(ckpt_dir) if n.endswith(".partial"))
        return FileState(MISSING, path, detail=f"{filename} is not in {ckpt_dir}", leftovers=partial)
    if not os.path.exists(path):
        return FileState(BROKEN, path, problem="dangling", detail=f"{path} is a dangling link")
    m = _TORCH_HASH.search(filename)
    return _check_blob(path, (path,), None, verify, memo, expected_prefix=m.group(1) if m else "")


def _listdir(d: str) -> Tuple[str, ...]:
    try:
        return tuple(os.listdir(d))
    except OSError:
        return ()


def stat_within(path: str, timeout: float = STAT_TIMEOUT) -> os.stat_result:
    """os.stat in a daemon thread: a network mount that no longer answers raises TimeoutError
    instead of hanging the doctor (the thread stays blocked; it does not keep the process alive)."""
    box = {}

    def run():
        try:
            box["st"] = os.stat(path)
        except OSError as e:
            box["err"] = e

    t = threading.Thread(target=run, name=f"stat {path}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(path)
    if "err" in box:
        raise box["err"]
    return box["st"]


def inspect_path(path: str, kind: str = "file", timeout: float = STAT_TIMEOUT) -> FileState:
    """A local dataset, model folder or file: exists, readable, non-empty, not a Git LFS pointer."""
    try:
        st = stat_within(path, timeout)
    except TimeoutError:
        return FileState(BROKEN, path, problem="no-answer",
                         detail=f"{path}: no answer within {timeout:.0f} s (a network mount that hangs?)")
    except FileNotFoundError:
        return FileState(MISSING, path, detail=f"{path} does not exist")
    except PermissionError:
        return FileState(UNREADABLE, path, detail=f"no permission to look at {path}")
    if stat.S_ISDIR(st.st_mode):
        try:
            entries = os.listdir(path)
        except PermissionError:
            return FileState(UNREADABLE, path, detail=f"no permission to list {path}")
        if not entries:
            return FileState(BROKEN, path, problem="empty", detail=f"{path} is an empty folder")
        pointers = []
        for name in entries[:200]:
            p = os.path.join(path, name)
            if os.path.isfile(p) and _is_lfs_pointer(p):
                pointers.append(p)
        if pointers:
            return FileState(BROKEN, path, problem="lfs-pointer",
                             detail=f"{len(pointers)} file(s) are Git LFS pointers, e.g. {pointers[0]} (run `git lfs pull`)")
        return FileState(PRESENT, path)
    return _check_blob(path, (path,), None, False, None)


def _is_lfs_pointer(path: str) -> bool:
    try:
        if os.path.getsize(path) > 1024:
            return False
        with open_regular(path) as f:
            return f.read(len(LFS_POINTER_PREFIX)) == LFS_POINTER_PREFIX
    except OSError:
        return False


def inspect_python(path: str) -> FileState:
    """An interpreter the repo's train script hard-codes: exists and is executable."""
    real = os.path.realpath(path)
    if not os.path.exists(path):
        return FileState(MISSING, path, detail=f"{path} does not exist" + (f" (link to {real})" if real != path else ""))
    if not os.access(real, os.X_OK):
        return FileState(BROKEN, path, problem="not-executable", detail=f"{path} is not executable")
    return FileState(PRESENT, path, blob=real)
