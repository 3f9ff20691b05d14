"""The needs lock: what successful runs really used, per repo and model, beside the registry.

`mutation/needs.lock.json` (next to models_config.json; `--needs-lock FILE` to choose) holds, per
repo and model, the union of the observations (observer.collect's `needs.json`) of its successful
experiments: Hub files with revision, commit, size and sha256; torch hub checkpoints with size and
sha256; local folders and weight files; network hosts; interpreters with torch and CUDA arch list.
Each entry says when and where it was last seen (`run_<ts>/<experiment id>`, time, machine). It is
meant to be reviewed and committed like any lock file: keys and lists are sorted, two-space JSON.

Writers take an exclusive `fcntl.flock` on `<lock>.lock`, read, merge, and replace the file
atomically, so two runners merging at once both land. Running as root for a sudo user, the lock
and its `.lock` file are created through descriptors and given to that user (never following a
link planted in their place).

The reading side gives the lock's entries as need sources (`found()`: the shape core.discover
uses, provenance `observed in run_<ts>/<id>`) and compares present weight files with the locked
hashes (`changed()`).
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import stat
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

FORMAT_VERSION = 1
LOCK_NAME = "needs.lock.json"
TORCH_MODELS = "https://download.pytorch.org/models"
READ_LIMIT = 64 * 1024 * 1024
NOTE = ("What successful mutation-run experiments used, per repo and model (written by mutation-run; "
        "review and commit it like any lock file).")
SECTIONS = {  # section -> the fields that identify an entry
    "hub_files": ("repo_type", "repo", "revision", "file"),
    "checkpoints": ("file",),
    "folders": ("path",),
    "files": ("path",),
    "hosts": ("host", "port"),
    "interpreters": ("executable",),
}


class LockError(Exception):
    """A lock file that cannot be used: one line naming the file and what is wrong."""


@dataclass(frozen=True)
class Seen:
    """Where an observation comes from: `run_<ts>/<experiment id>`, when, on which machine."""

    run: str
    at: str
    machine: str = ""

    def record(self) -> dict:
        return {"run": self.run, "at": self.at, "machine": self.machine or socket.gethostname()}


def default_path(models_config: str) -> str:
    """The lock beside the registry: `<folder of models_config.json>/needs.lock.json`."""
    return os.path.join(os.path.dirname(os.path.abspath(models_config)), LOCK_NAME)


def path_for(options, registry_path: str) -> str:
    """`--needs-lock FILE` (options.needs_lock), else the lock beside the registry."""
    chosen = getattr(options, "needs_lock", None)
    return os.path.abspath(chosen) if chosen else default_path(registry_path)


def empty() -> dict:
    return {"format_version": FORMAT_VERSION, "note": NOTE, "repos": {}}


def read(path: str) -> dict:
    """The lock at `path` (an empty lock when there is none); LockError when it cannot be used."""
    from core.safefs import read_regular

    try:
        data = json.loads(read_regular(path, READ_LIMIT).decode("utf-8"))
    except FileNotFoundError:
        return empty()
    except ValueError as e:
        raise LockError(f"{path}: invalid JSON ({e}); fix or delete it, the next successful run rewrites it") from None
    except OSError as e:
        raise LockError(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("repos"), dict):
        raise LockError(f"{path}: expected an object with a \"repos\" object")
    return data


def _key(section: str, entry: Mapping) -> Tuple:
    return tuple(str(entry.get(k)) for k in SECTIONS[section])


def _entries(section: str, needs: Mapping) -> List[dict]:
    """The lock's form of one section of a needs.json (portable fields only, no cache paths)."""
    out = []
    for e in needs.get(section) or []:
        if section == "hub_files":
            if e.get("sha256") is None:
                continue
            out.append({k: e.get(k) for k in ("repo_type", "repo", "revision", "commit", "file", "size", "sha256")})
        elif section == "checkpoints":
            if e.get("sha256") is None:
                continue
            out.append({k: e.get(k) for k in ("file", "size", "sha256", "url") if k != "url" or e.get("url")})
        elif section in ("folders", "files"):
            item = {"path": e.get("relative") or e.get("path")}
            if section == "files":
                if e.get("sha256") is None:
                    continue
                item.update(size=e.get("size"), sha256=e.get("sha256"))
            out.append(item)
        elif section == "hosts":
            out.append({"host": e.get("host"), "port": e.get("port")})
        else:
            item = {k: e.get(k) for k in ("executable", "version", "observable") if k in e}
            if e.get("torch"):
                item["torch"] = dict(e["torch"])
            if e.get("reason"):
                item["reason"] = e["reason"]
            out.append(item)
    return out


def merge(lock: Mapping, repo: str, model: str, needs: Mapping, seen: Seen) -> dict:
    """`lock` with one experiment's observation merged into `repo`/`model` (a new dict).

    An entry with the same identity (a Hub file: repo, revision, file; a checkpoint: its name; a
    folder or file: its path; ...) is replaced by the newer observation; others are kept (union)."""
    out = json.loads(json.dumps(lock)) if lock else empty()
    out["format_version"], out["note"] = FORMAT_VERSION, NOTE
    slot = out.setdefault("repos", {}).setdefault(repo, {}).setdefault(model, {})
    stamp = seen.record()
    for section in SECTIONS:
        current = {_key(section, e): e for e in slot.get(section, []) if isinstance(e, dict)}
        for e in _entries(section, needs):
            e["last_seen"] = stamp
            current[_key(section, e)] = e
        if current:
            slot[section] = [current[k] for k in sorted(current)]
    return out


def dumps(lock: Mapping) -> str:
    return json.dumps(lock, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _open_lockfile(path: str, owner: Optional[Tuple[int, int]]) -> int:
    """The flock file: created here (and then given to `owner`), or an existing regular file with
    one link that is never given away (a hard link planted to another file stays that file's)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        if owner is not None:
            os.fchown(fd, owner[0], owner[1])
        return fd
    except FileExistsError:
        pass
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise LockError(f"{path}: not a regular file with one link; not using it as the lock's flock file")
    return fd


def _write(path: str, text: str, owner: Optional[Tuple[int, int]]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".needs.lock.", dir=folder)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fchmod(fd, 0o644)
        if owner is not None:
            os.fchown(fd, owner[0], owner[1])
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    finally:
        if fd >= 0:
            os.close(fd)
        if os.path.lexists(tmp):
            os.unlink(tmp)


def update(path: str, repo: str, model: str, needs: Mapping, seen: Seen,
           owner: Optional[Tuple[int, int]] = None) -> dict:
    """Merge one successful experiment's observation into the lock at `path`, under an exclusive
    flock on `<path>.lock`; returns the lock as written. `owner` (uid, gid): who gets new files."""
    if os.path.islink(path):
        raise LockError(f"{path}: is a symbolic link; not writing through it")
    fd = _open_lockfile(path + ".lock", owner)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        lock = merge(read(path), repo, model, needs, seen)
        _write(path, dumps(lock), owner)
        return lock
    finally:
        os.close(fd)  # releases the flock


# -- reading side ---------------------------------------------------------------------------------
def model_entries(lock: Mapping, repo: str, model: str) -> Mapping[str, List[dict]]:
    return ((lock.get("repos") or {}).get(repo) or {}).get(model) or {}


def _provenance(entry: Mapping) -> str:
    run = (entry.get("last_seen") or {}).get("run") or "?"
    return f"observed in {run}"


def specs(lock: Mapping, repo: str, model: str) -> List[Tuple[str, dict, str]]:
    """The lock's needs of `repo`/`model` as registry declarations: (kind, spec, provenance).

    Hub files are pinned to the commit the runs used (`revision`: the commit); torch hub checkpoints
    are `url` needs (the URL the run downloaded it from, else torchvision's host); folders and
    files are `path` needs; interpreters `python` needs (only when observable)."""
    slot = model_entries(lock, repo, model)
    out = []
    for e in slot.get("hub_files", []):
        spec = {"hf": e["repo"], "files": [e["file"]], "revision": e.get("commit") or e.get("revision") or "main"}
        if e.get("repo_type") not in (None, "model"):
            spec["repo_type"] = e["repo_type"]
        out.append(("hf", spec, _provenance(e)))
    for e in slot.get("checkpoints", []):  # torch hub; torchvision's own weights live on its default host
        out.append(("url", {"url": e.get("url") or f"{TORCH_MODELS}/{e['file']}", "file": e["file"]}, _provenance(e)))
    for e in slot.get("folders", []):
        out.append(("path", {"path": e["path"], "kind": "folder"}, _provenance(e)))
    for e in slot.get("files", []):
        out.append(("path", {"path": e["path"], "kind": "file"}, _provenance(e)))
    for e in slot.get("interpreters", []):
        if e.get("observable", True) and e.get("executable"):
            out.append(("python", {"python": e["executable"]}, _provenance(e)))
    return out


def found(lock: Mapping, repo: str, repo_dir: str, model: str) -> list:
    """The lock's needs of `repo`/`model` as core.discover `Found` records (blocking, confidence 1)."""
    from core.discover import Found
    from core.model import Need

    return [Found(kind, spec, repo, model, prov, 1.0, True, Need(kind=kind, spec=spec, repo=repo, repo_dir=repo_dir))
            for kind, spec, prov in specs(lock, repo, model)]


@dataclass(frozen=True)
class Change:
    """A locked weight file present where the launched process looks, with other content."""

    repo: str
    model: str
    what: str  # "org/name@rev:file" or a checkpoint name
    path: str
    locked_sha256: str
    sha256: str
    provenance: str


def changed(lock: Mapping, pairs: Sequence[Tuple[str, str]], hf_cache: str, torch_hub: str,
            hasher: Callable[[str], str]) -> List[Change]:
    """Weight files of the (repo, model) `pairs` present in the launch context's caches whose sha256
    differs from the lock's ("the weights changed since the recorded runs"). Missing files are not
    changes: the locked need reports them."""
    out = []
    for repo, model in pairs:
        slot = model_entries(lock, repo, model)
        items = []
        for e in slot.get("hub_files", []):
            folder = os.path.join(hf_cache, f"{e.get('repo_type') or 'model'}s--" + e["repo"].replace("/", "--"))
            what = f"{e['repo']}@{e.get('revision')}:{e['file']}"
            for commit in dict.fromkeys((e.get("commit") or "", _ref(folder, e.get("revision") or ""))):
                if commit:
                    items.append((what, os.path.join(folder, "snapshots", commit, e["file"]), e))
        for e in slot.get("checkpoints", []):
            items.append((e["file"], os.path.join(torch_hub, "checkpoints", e["file"]), e))
        for what, path, e in items:
            if not e.get("sha256") or not os.path.isfile(path):
                continue
            try:
                digest = hasher(path)
            except OSError:
                continue
            if digest != e["sha256"]:
                out.append(Change(repo, model, what, path, e["sha256"], digest, _provenance(e)))
    return out


def _ref(folder: str, revision: str) -> str:
    """The commit `refs/<revision>` names in a HF cache repo folder now ("" when none)."""
    try:
        with open(os.path.join(folder, "refs", revision), encoding="utf-8") as f:
            return f.read().strip()
    except (OSError, ValueError):
        return ""


def checkpoint_names(lock: Mapping, repo: str, model: str) -> Dict[str, str]:
    """Locked torch hub checkpoint names -> sha256 (for prefetch and the cache group)."""
    return {e["file"]: e.get("sha256") or "" for e in model_entries(lock, repo, model).get("checkpoints", [])}
