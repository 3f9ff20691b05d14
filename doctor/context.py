"""The context every check receives, and the memoised state of every need in the launch context."""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from doctor import hubcache
from doctor.hubcache import BROKEN, MISSING, PRESENT, UNREADABLE, FileState
from doctor.launch import other_cache_locations
from doctor.model import GROUPS, LaunchContext, Need
from doctor.plan import Plan
from doctor.registry import Registry
from doctor.resolve import Resolved, ResolveError, Resolver

HUB_KINDS = ("timm", "hf")
CACHE_KINDS = ("timm", "hf", "torchvision", "path", "python")


@dataclass(frozen=True)
class Options:
    """What the user asked for on the command line."""

    project_root: str = "."
    settings_file: Optional[str] = None
    models_config: str = ""
    launch: str = "current"
    groups: Tuple[str, ...] = GROUPS
    verify: bool = False
    deep: bool = False
    timeout: float = 3.0
    memo_dir: Optional[str] = None  # where resolve/hash memos live; None: ~/.cache/mutation-preflight
    allow_download: bool = False  # weights missing from the cache only warn (the run may download them)


@dataclass(frozen=True)
class NeedState:
    """One need as the launched process will find it.

    `status`: present | missing | broken | unreadable | unknown | error. `found_elsewhere` lists
    (label, path) of other caches that hold it. `experiments` are the ids of the experiments that
    need it.
    """

    need: Need
    status: str
    path: str = ""
    detail: str = ""
    problem: str = ""
    experiments: Tuple[str, ...] = ()
    files: Tuple[FileState, ...] = ()
    resolved: Optional[Resolved] = None
    found_elsewhere: Tuple[Tuple[str, str], ...] = ()

    @property
    def present(self) -> Optional[bool]:
        if self.status in (UNREADABLE, "unknown", "error"):
            return None
        return self.status == PRESENT


@dataclass
class DoctorContext:
    """Plan, registry, launch context and options, plus memoised need states shared by checks."""

    options: Options
    registry: Registry
    plan: Plan
    launch: LaunchContext
    resolver: Resolver = None
    hashes: hubcache.HashMemo = None
    _states: Optional[Dict[str, NeedState]] = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self):
        memo_dir = self.options.memo_dir or os.path.dirname(hubcache.default_memo_path())
        if self.resolver is None:
            self.resolver = Resolver(os.path.join(memo_dir, "resolve.json"))
        if self.hashes is None:
            self.hashes = hubcache.HashMemo(os.path.join(memo_dir, "sha256.json"))

    @property
    def experiments(self):
        return self.plan.experiments

    def needs(self) -> Dict[str, Tuple[Need, Tuple[str, ...]]]:
        """Every distinct need of the plan with the ids of the experiments that need it."""
        out: Dict[str, Tuple[Need, list]] = {}
        for e in self.plan.experiments:
            for n in e.needs:
                out.setdefault(n.key, (n, []))[1].append(e.id)
        return {k: (n, tuple(ids)) for k, (n, ids) in out.items()}

    def need_states(self) -> Dict[str, NeedState]:
        """The state of every cache-relevant need in the launch context (computed once, thread-safe)."""
        with self._lock:
            if self._states is None:
                from concurrent.futures import ThreadPoolExecutor

                items = [(n, ids) for n, ids in self.needs().values() if n.kind in CACHE_KINDS]
                with ThreadPoolExecutor(max_workers=min(8, max(1, len(items)))) as pool:
                    states = list(pool.map(lambda it: self._state(*it), items))
                self._states = {s.need.key: s for s in states}
                self.resolver.save()
                self.hashes.save()
            return self._states

    def _state(self, need: Need, ids: Tuple[str, ...]) -> NeedState:
        try:
            files, resolved = self._inspect(need, self.launch.hf_cache, self.launch.torch_hub, self.options.verify)
        except ResolveError as e:
            return NeedState(need, "error", detail=str(e), problem="unresolved", experiments=ids)
        status, main = _combine(files, resolved)
        elsewhere = ()
        if status != PRESENT and need.kind in ("timm", "hf", "torchvision"):
            elsewhere = self._elsewhere(need)
        return NeedState(need, status, path=main.path, detail=main.detail, problem=main.problem, experiments=ids,
                         files=files, resolved=resolved, found_elsewhere=elsewhere)

    def _inspect(self, need: Need, hf_cache: str, torch_hub: str, verify: bool):
        if need.kind == "path":
            return (hubcache.inspect_path(need.resolved_path, need.spec.get("kind", "file")),), None
        if need.kind == "python":
            return (hubcache.inspect_python(os.path.expanduser(need.spec["python"])),), None
        r = self.resolver.resolve(need)
        if r.source == "torchhub":
            return (hubcache.inspect_torch_checkpoint(torch_hub, r.filename, verify, self.hashes),), r
        return tuple(hubcache.inspect_hf_file(hf_cache, r.repo_id, f, r.revision, verify=verify, memo=self.hashes)
                     for f in r.files), r

    def _elsewhere(self, need: Need) -> Tuple[Tuple[str, str], ...]:
        out = []
        for label, hf, th in other_cache_locations(self.launch):
            try:
                files, r = self._inspect(need, hf, th, False)
            except ResolveError:
                return ()
            status, main = _combine(files, r)
            if status == PRESENT:
                out.append((label, hf if r and r.source == "hf" else th))
        return tuple(out)


def _combine(files: Tuple[FileState, ...], r: Optional[Resolved]) -> Tuple[str, FileState]:
    """One status for a need from its files.

    timm tries model.safetensors, then pytorch_model.bin (huggingface_hub's LocalEntryNotFoundError
    is an EntryNotFoundError, which timm catches), so for timm any cached candidate will do. Other
    needs want every file.
    """
    if r is not None and r.any_of:
        for f in files:
            if f.status == PRESENT:
                return PRESENT, f
        return files[0].status, files[0]
    for f in files:
        if f.status != PRESENT:
            return f.status, f
    return PRESENT, files[0]
