"""Discovery for one repo of the registry: script facts per model, loads reached per model, and
the loads of the repo no model is shown to reach (unattributed candidates).

Python files are scanned once per (path, size, mtime) and memoised in a JsonMemo; scripts are
parsed once per (path, size, mtime) per process.
"""
from __future__ import annotations

import os
import threading
from typing import Dict, Iterator, List, Optional, Tuple

from core.discover.attribute import YES, Reached, reached_loads
from core.discover.pysource import SCAN_VERSION, may_load, scan_source
from core.discover.script import ScriptFacts, script_facts
from core.discover.shell import Script, parse_script, script_from_json, script_to_json
from core.memo import JsonMemo

SKIP_DIRS = {".git", "__pycache__", "node_modules", "site-packages", ".venv", "venv", "env", ".tox", "build", "dist"}
MAX_FILES = 3000
MAX_BYTES = 2_000_000


def _stat_key(path: str) -> Optional[str]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{SCAN_VERSION}:{path}:{st.st_size}:{st.st_mtime_ns}"


class SourceMemo:
    """Scan summaries of Python files and parsed scripts, keyed by (path, size, mtime)."""

    def __init__(self, path: Optional[str] = None):
        self.disk = JsonMemo(path, limit=20000)
        self._scripts: Dict[str, Script] = {}
        self._summaries: Dict[str, dict] = {}
        self._lock = threading.Lock()
        self.scanned = 0  # files parsed by this process (not served from the memo)

    def summary(self, path: str, only_loads: bool = False) -> Optional[dict]:
        """The scan of one file; `only_loads`: a file whose text cannot hold a load is not parsed."""
        key = _stat_key(path)
        if key is None:
            return None
        hit = self._summaries.get(key) or self.disk.get(key)
        if hit is None:
            try:
                if os.path.getsize(path) > MAX_BYTES:
                    return None
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read()
                if only_loads and not may_load(text):
                    return None
                hit = scan_source(text, path)
            except OSError:
                return None
            self.scanned += 1
            self.disk.put(key, hit)
        with self._lock:
            self._summaries[key] = hit
        return hit

    def script(self, path: str) -> Optional[Script]:
        key = _stat_key(path)
        if key is None:
            return None
        hit = self._scripts.get(key)
        if hit is None:
            stored = self.disk.get("sh:" + key)
            if stored is not None:
                hit = script_from_json(path, stored)
            else:
                try:
                    with open(path, encoding="utf-8", errors="replace") as f:
                        hit = parse_script(path, f.read())
                except OSError:
                    return None
                self.scanned += 1
                self.disk.put("sh:" + key, script_to_json(hit))
            self._scripts[key] = hit
        return hit

    def save(self) -> None:
        """Write the memo, only into a folder this process owns: as root under sudo, HOME may be the
        user's, and a root-owned cache folder there would break the user's own tools (a memo only
        saves time)."""
        if self.disk.path and _owned(os.path.dirname(self.disk.path)):
            self.disk.save()


def _owned(folder: str) -> bool:
    """Whether the folder, or its nearest existing parent, belongs to this process's user."""
    while folder and not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    try:
        return os.stat(folder).st_uid == os.geteuid()
    except OSError:
        return False


def python_files(repo_dir: str) -> Iterator[str]:
    """The repo's Python files (no VCS, caches, virtualenvs or hidden folders), at most MAX_FILES."""
    count = 0
    for root, dirs, files in os.walk(repo_dir):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        for f in sorted(files):
            if f.endswith(".py"):
                yield os.path.join(root, f)
                count += 1
                if count >= MAX_FILES:
                    return


def script_path(repo_dir: str, train_script: str) -> str:
    words = train_script.split()
    first = words[0] if words else train_script
    return os.path.normpath(first if os.path.isabs(first) else os.path.join(repo_dir, first))


def model_launch(memo: SourceMemo, repo_dir: str, train_script: str, model: str, model_flag: Optional[str],
                 extra_args: Tuple[str, ...], home: str, path_env: str) -> Tuple[Optional[ScriptFacts], List[Reached], dict]:
    """The script facts of one model and the loads its entry reaches (with the option values)."""
    spath = script_path(repo_dir, train_script)
    script = memo.script(spath)
    if script is None:
        return None, [], {}
    facts = script_facts(script, model, model_flag, home, path_env)
    if not facts.entry or facts.entry.startswith("-m ") or "$" in facts.entry:
        return facts, [], {}
    entry = os.path.normpath(os.path.join(repo_dir, facts.entry))
    argv = [w for w in facts.argv if "$" not in w]
    if facts.passes_args:
        argv += ([model_flag, model] if model_flag else []) + list(extra_args)
    reached, opts = reached_loads(repo_dir, entry, argv, memo.summary)
    return facts, reached, opts


def repo_loads(memo: SourceMemo, repo_dir: str) -> List[Reached]:
    """Every load written in the repo's Python files (as unreached records)."""
    out = []
    for path in python_files(repo_dir):
        s = memo.summary(path, only_loads=True)
        if not s:
            continue
        rel = os.path.relpath(path, repo_dir)
        for scope, events in s.get("scopes", {}).items():
            for e in events:
                if "load" in e:
                    out.append(Reached(e["load"], rel, e["line"], "", (f"{rel}:{e['line']}",), e.get("text", "")))
    return out


def attributed_keys(reached: List[Reached]) -> set:
    return {(r.file, r.line) for r in reached if r.status == YES}
