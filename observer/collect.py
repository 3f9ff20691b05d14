"""Turn the observer's per-process lines into one experiment's `needs.json`.

The result names what the training really used, in the shape the needs lock records:
- `hub_files`: Hugging Face files (repo, repo_type, revision, commit, file, blob, size, sha256),
  from paths under `models--org--name/` seen in audit events, mappings, or opens of blobs seen by
  inotify (native loaders such as safetensors), each blob mapped back to its snapshot file name;
- `checkpoints`: torch hub checkpoints (`<torch hub>/checkpoints/<file>`, size, sha256, and the
  URL it was downloaded from when the run downloaded it);
- `folders`: local folders read, collapsed to their top folders (a folder whose files were read in
  two or more sub-folders stands for them), repo-relative when under the process's cwd;
- `files`: weight-like local files (`.pth`, `.bin`, `.safetensors`, ...), with size and sha256;
- `hosts`: network hosts contacted; `interpreters`: path, version, torch, CUDA arch list, and
  whether the interpreter could be observed at all.
"""
import glob
import hashlib
import json
import os
import re
import stat
from typing import Callable, Dict, Iterable, List, Optional, Tuple

FORMAT_VERSION = 1
_HF_DIR = re.compile(r"^(models|datasets|spaces)--(.+)$")
_WEIGHT_EXT = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".h5", ".onnx", ".gguf")
_CODE_EXT = (".py", ".pyc", ".pyi", ".so", ".pyd", ".dist-info", ".egg-info")  # site .pth files live in site-packages
_SYSTEM = ("/usr/", "/lib/", "/lib64/", "/etc/", "/proc/", "/sys/", "/dev/", "/run/", "/var/lib/", "/bin/", "/sbin/")
_PACKAGES = ("/site-packages/", "/dist-packages/", "/__pycache__/", ".egg-info/", ".dist-info/",
             "/torchinductor_", "/.triton/", "/triton_cache/")  # compiler caches are not needs


def read_lines(folder: str, skip_background: bool = True) -> List[dict]:
    """Every complete record of every process (a line cut short by a kill is skipped). A parallel
    experiment's background processes (run id ending in `/background`) are left out."""
    out = []
    for path in sorted(glob.glob(os.path.join(folder, "*.jsonl"))):
        recs = []
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(rec, dict) and "t" in rec:
                        recs.append(rec)
        except OSError:
            continue
        if skip_background and any(str(r.get("run") or "").endswith("/background") for r in recs if r["t"] == "process"):
            continue
        out += recs
    return out


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _hf_parts(path: str) -> Optional[Tuple[str, str, str, List[str]]]:
    """(cache, repo_type, repo_id, rest) for a path inside a HF cache repo folder."""
    parts = path.split("/")
    for i, p in enumerate(parts):
        m = _HF_DIR.match(p)
        if m and i + 1 < len(parts):
            return "/".join(parts[:i]), m.group(1)[:-1], m.group(2).replace("--", "/"), parts[i + 1:]
    return None


def _snapshot_files(repo_dir: str) -> Dict[str, Tuple[str, str]]:
    """blob name -> (commit, file name) for every link of the repo's snapshots."""
    out: Dict[str, Tuple[str, str]] = {}
    snaps = os.path.join(repo_dir, "snapshots")
    for root, _dirs, files in os.walk(snaps):
        for name in files:
            link = os.path.join(root, name)
            rel = os.path.relpath(link, snaps).split("/", 1)
            if len(rel) == 2:
                out.setdefault(os.path.basename(os.path.realpath(link)), (rel[0], rel[1]))
    return out


def _refs(repo_dir: str) -> Dict[str, List[str]]:
    """commit -> revision names pointing at it."""
    out: Dict[str, List[str]] = {}
    refs = os.path.join(repo_dir, "refs")
    for root, _dirs, files in os.walk(refs):
        for name in files:
            try:
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    commit = f.read().strip()
            except OSError:
                continue
            out.setdefault(commit, []).append(os.path.relpath(os.path.join(root, name), refs))
    return out


class _Hub:
    """Hugging Face cache paths seen, resolved to (repo, revision, file, blob)."""

    def __init__(self):
        self.files: Dict[Tuple[str, str, str, str], dict] = {}
        self.revisions_read: Dict[str, set] = {}  # repo folder -> refs/<rev> opened
        self._snap: Dict[str, Dict[str, Tuple[str, str]]] = {}

    def add(self, path: str) -> bool:
        hp = _hf_parts(path)
        if hp is None:
            return False
        cache, repo_type, repo_id, rest = hp
        repo_dir = os.path.join(cache, f"{repo_type}s--" + repo_id.replace("/", "--"))
        if rest[0] == "refs" and len(rest) > 1:
            self.revisions_read.setdefault(repo_dir, set()).add("/".join(rest[1:]))
        elif rest[0] == "snapshots" and len(rest) > 2:
            self._file(cache, repo_type, repo_id, repo_dir, rest[1], "/".join(rest[2:]),
                       os.path.basename(os.path.realpath(path)))
        elif rest[0] == "blobs" and len(rest) == 2 and not rest[1].endswith((".incomplete", ".lock")):
            snap = self._snap.get(repo_dir)
            if snap is None:
                snap = self._snap[repo_dir] = _snapshot_files(repo_dir)
            if rest[1] in snap:
                commit, name = snap[rest[1]]
                self._file(cache, repo_type, repo_id, repo_dir, commit, name, rest[1])
        return True

    def _file(self, cache, repo_type, repo_id, repo_dir, commit, name, blob) -> None:
        key = (repo_type, repo_id, commit, name)
        self.files.setdefault(key, {"repo": repo_id, "repo_type": repo_type, "commit": commit, "file": name,
                                    "blob": blob, "cache": cache, "_repo_dir": repo_dir,
                                    "path": os.path.join(repo_dir, "snapshots", commit, name)})

    def entries(self, hasher: Callable[[str], str]) -> List[dict]:
        out = []
        for key in sorted(self.files):
            e = dict(self.files[key])
            repo_dir = e.pop("_repo_dir")
            names = sorted(_refs(repo_dir).get(e["commit"], []))
            read = self.revisions_read.get(repo_dir, set())
            chosen = [n for n in names if n in read] or names
            e["revision"] = chosen[0] if chosen else e["commit"]
            out.append(_with_content(e, e["path"], hasher))
        return out


def _with_content(entry: dict, path: str, hasher: Callable[[str], str]) -> dict:
    try:
        entry["size"] = os.path.getsize(path)
        entry["sha256"] = hasher(path)
    except OSError as e:
        entry["size"], entry["sha256"] = None, None
        entry["error"] = f"{type(e).__name__}: {e.strerror or e}"
    return entry


def _excluded(path: str, prefixes: Iterable[str]) -> bool:
    if path.startswith(_SYSTEM) or any(p in path for p in _PACKAGES) or path.endswith(_CODE_EXT):
        return True
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes if p)


def _ancestors(path: str) -> List[str]:
    out = []
    while True:
        parent = os.path.dirname(path)
        if parent == path:
            return out
        out.append(parent)
        path = parent


def collapse(folders: Iterable[str], protected: Iterable[str] = ()) -> List[str]:
    """Top folders: a folder under which files were read in two or more sub-folders stands for
    everything under it; never a protected folder (cwd, home) or one above it."""
    guard = {"/"}
    for p in protected:
        p = p.rstrip("/") or "/"
        guard.update([p] + _ancestors(p))
    dirs = set(folders)
    branches: Dict[str, set] = {}
    for d in dirs:
        cur = d
        for parent in _ancestors(d):
            branches.setdefault(parent, set()).add(cur)
            cur = parent
    out = set()
    for d in dirs:
        best = d
        for parent in _ancestors(d):
            if parent in guard:
                break
            if len(branches.get(parent, ())) >= 2:
                best = parent
        out.add(best)
    return sorted(x for x in out if not any(a in out and a not in guard for a in _ancestors(x)))


def _interpreters(lines: List[dict]) -> List[dict]:
    by_pid_torch = {r["pid"]: r for r in lines if r.get("t") == "torch"}
    out: Dict[str, dict] = {}
    for r in lines:
        if r.get("t") != "process":
            continue
        e = out.setdefault(r.get("executable") or "?", {"executable": r.get("executable"), "version": r.get("version"),
                                                        "observable": bool(r.get("observable")), "processes": 0})
        e["processes"] += 1
        if not r.get("observable"):
            e["observable"] = False
            e["reason"] = r.get("reason")
        t = by_pid_torch.get(r.get("pid"))
        if t and "torch" not in e:
            e["torch"] = {"version": t.get("version"), "cuda": t.get("cuda"), "arch_list": t.get("arch_list") or []}
    for t in lines:  # forked workers have no process line of their own
        if t.get("t") == "torch" and not any("torch" in e for e in out.values()) and out:
            next(iter(out.values()))["torch"] = {"version": t.get("version"), "cuda": t.get("cuda"),
                                                 "arch_list": t.get("arch_list") or []}
    return [out[k] for k in sorted(out)]


def _older(path: str, started: Optional[float]) -> bool:
    """A regular file that existed before the run started (a file the run wrote is an output)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and (started is None or st.st_mtime < started)


def _weights_in(folder: str, started: Optional[float]) -> List[str]:
    """Weight-like files in a folder the training read (the observer records only the first file
    read per folder); files written since the run started are its outputs, not its needs."""
    out = []
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.name.endswith(_WEIGHT_EXT) and e.is_file() and (started is None or e.stat().st_mtime < started):
                    out.append(e.path)
    except OSError:
        pass
    return out


def _dot_entries(home: str) -> List[str]:
    try:
        return [n for n in os.listdir(home) if n.startswith(".")]
    except OSError:
        return [".cache", ".config", ".local"]


def collect(folder: str, hasher: Optional[Callable[[str], str]] = None) -> dict:
    """`needs.json` for one experiment from its observer folder."""
    hasher = hasher or sha256_file
    lines = read_lines(folder)
    procs = [r for r in lines if r.get("t") == "process"]
    if not procs:
        return {"format_version": FORMAT_VERSION, "observed": False,
                "reason": "no Python process of the experiment reported (not Python, or started with -I/-E/-S)",
                "hub_files": [], "checkpoints": [], "folders": [], "files": [], "hosts": [], "interpreters": []}
    prefixes = {folder}
    for r in procs:
        if r.get("home"):  # the user's settings and caches (~/.cache, ~/.config, ~/.netrc, ...): not data
            prefixes.update(os.path.join(r["home"], n) for n in _dot_entries(r["home"]))
        prefixes.update(x for x in (r.get("prefix"), r.get("base_prefix"), r.get("hf_cache"), r.get("torch_hub")) if x)
        if r.get("executable"):
            prefixes.add(os.path.dirname(os.path.dirname(os.path.realpath(r["executable"]))))
    cwds = sorted({r["cwd"] for r in procs if r.get("cwd")})
    hub, checkpoints, read_dirs, weight_files = _Hub(), {}, set(), set()
    started = min((r.get("at") or 0) for r in procs) or None
    torch_hubs = {r.get("torch_hub") for r in procs if r.get("torch_hub")}
    for r in lines:
        kind = r.get("t")
        if kind == "inotify":
            path = os.path.join(r.get("dir", ""), r.get("name", ""))
        elif kind in ("open", "map"):
            path = r.get("path") or ""
        else:
            continue
        if hub.add(path):
            continue
        th = next((h for h in torch_hubs if path.startswith(h.rstrip("/") + "/checkpoints/")), None)
        if th is not None:
            if not path.endswith((".partial", ".lock")):
                checkpoints.setdefault(os.path.basename(path), path)
            continue
        if _excluded(path, prefixes) or not _older(path, started):
            continue
        if path.endswith(_WEIGHT_EXT):
            weight_files.add(path)
        read_dirs.add(os.path.dirname(path))
    for d in sorted(read_dirs):
        weight_files.update(_weights_in(d, started))
    home = [os.path.expanduser("~")]
    folders = [{"path": d, "relative": _relative(d, cwds)} for d in collapse(read_dirs, cwds + home)]
    hosts = sorted({(str(r.get("host")), r.get("port")) for r in lines if r.get("t") == "connect"},
                   key=lambda x: (x[0], str(x[1])))
    resolved = sorted({str(r.get("host")) for r in lines if r.get("t") == "resolve"})
    urls = {os.path.basename(r["url"]): r["url"] for r in lines if r.get("t") == "request" and r.get("url")}
    return {"format_version": FORMAT_VERSION, "observed": any(r.get("observable") for r in procs),
            "hub_files": hub.entries(hasher),
            "checkpoints": [_with_content({"file": n, "path": p, "url": urls.get(n)}, p, hasher)
                            for n, p in sorted(checkpoints.items())],
            "folders": folders,
            "files": [_with_content({"path": p, "relative": _relative(p, cwds)}, p, hasher) for p in sorted(weight_files)],
            "hosts": [{"host": h, "port": p} for h, p in hosts], "resolved_hosts": resolved,
            "interpreters": _interpreters(lines), "cwd": cwds}


def _relative(path: str, cwds: List[str]) -> Optional[str]:
    for c in cwds:
        if path == c:
            return "."
        if path.startswith(c.rstrip("/") + "/"):
            return os.path.relpath(path, c)
    return None


def summary(needs: dict) -> dict:
    """The experiment.json `observed` object: counts and names, not the full lists."""
    return {"observed": needs.get("observed", False), "needs_file": "needs.json",
            "hub_files": [f"{e['repo']}@{e.get('revision')}:{e['file']}" for e in needs.get("hub_files", [])],
            "checkpoints": [e["file"] for e in needs.get("checkpoints", [])],
            "folders": [e.get("relative") or e["path"] for e in needs.get("folders", [])],
            "hosts": sorted({e["host"] for e in needs.get("hosts", [])}),
            "interpreters": [e.get("executable") for e in needs.get("interpreters", [])],
            "not_observable": [e.get("executable") for e in needs.get("interpreters", []) if not e.get("observable")]}
