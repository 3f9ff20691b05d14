"""The context every check receives, and the memoised state of every need in the launch context."""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

from core import hubcache, sudo
from core.hubcache import PRESENT, UNREADABLE, FileState
from core.launch import ask_sudo_default, other_cache_locations
from core.memo import memo_dir
from core.model import GROUPS, LaunchContext, Need
from core.plan import Plan
from core.registry import Registry
from core.resolve import Resolved, ResolveError, Resolver
from core.sudo import inspect_task


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
    ask_sudo: bool = True  # a sudo launch's caches are inspected through `sudo -n` where it needs no password
    needs_lock: Optional[str] = None  # --needs-lock FILE; None: needs.lock.json beside the registry (core.needslock)
    locked: bool = False  # --locked: weights that changed since the recorded runs fail instead of warning


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
    inspected_as: str = ""  # who looked at the caches: "" this process, else e.g. "root (sudo -n)"
    inspect_notes: Tuple[str, ...] = ()  # why the caches could not be inspected as the launch user

    def __post_init__(self):
        folder = memo_dir(self.options)
        if self.resolver is None:
            self.resolver = Resolver(os.path.join(folder, "resolve.json"))
        if self.hashes is None:
            self.hashes = hubcache.HashMemo(os.path.join(folder, "sha256.json"))

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
        """The state of every cache-relevant need in the launch context (computed once, thread-safe).

        When the launched process runs as another user than this doctor (a normal user checking a
        `sudo` launch), the caches are inspected as that user through `sudo -n` where no password is
        needed; otherwise here, and what we may not read is reported as unreadable.
        """
        with self._lock:
            if self._states is None:
                from concurrent.futures import ThreadPoolExecutor

                items = [(n, ids) for n, ids in self.needs().values() if n.adapter.inspected]
                states = self._states_as_launch_user(items) if self._inspect_through_sudo() else None
                if states is None:
                    with ThreadPoolExecutor(max_workers=min(8, max(1, len(items)))) as pool:
                        states = list(pool.map(lambda it: self._state(*it), items))
                self._states = {s.need.key: s for s in states}
                self.resolver.save()
                self.hashes.save()
            return self._states

    def _state(self, need: Need, ids: Tuple[str, ...]) -> NeedState:
        try:
            files, resolved = self._inspect(need, self.launch.stores, self.options.verify)
        except ResolveError as e:
            return NeedState(need, "error", detail=str(e), problem="unresolved", experiments=ids)
        return self._need_state(need, ids, files, resolved)

    def _need_state(self, need: Need, ids: Tuple[str, ...], files: Tuple[FileState, ...],
                    resolved: Optional[Resolved]) -> NeedState:
        status, main = _combine(files, resolved)
        elsewhere = ()
        if status != PRESENT and need.adapter.downloaded:
            elsewhere = self._elsewhere(need)
        return NeedState(need, status, path=main.path, detail=main.detail, problem=main.problem, experiments=ids,
                         files=files, resolved=resolved, found_elsewhere=elsewhere)

    def _inspect_through_sudo(self) -> bool:
        launch = self.launch
        if not (self.options.ask_sudo and ask_sudo_default()) or os.getuid() == 0 or launch.uid != 0 \
                or launch.source == "self":
            return False
        if not sudo.passwordless():
            self.inspect_notes += (f"the caches were inspected as {launch.invoking_user}, not as {launch.user}: "
                                   "sudo -n cannot run commands here (sudo is absent or asks for a password)",)
            return False
        return True

    def _tasks(self, need: Need, stores: Mapping[str, str]):
        """The inspection tasks (see core.sudo.inspect_task) of one need in `stores`, and its resolution."""
        r = self.resolver.resolve(need) if need.adapter.downloaded else None
        return need.adapter.tasks(need.spec, need.path_for(self.launch.home), r, stores), r

    def _states_as_launch_user(self, items) -> Optional[list]:
        """All needs inspected in one `sudo -n` probe; None (and a note) when that is not possible."""

        planned, tasks = [], []
        for need, ids in items:
            try:
                t, r = self._tasks(need, self.launch.stores)
            except ResolveError as e:
                planned.append((need, ids, None, None, str(e)))
                continue
            planned.append((need, ids, r, (len(tasks), len(tasks) + len(t)), ""))
            tasks += t
        files, why = sudo.inspect_as(tasks, verify=self.options.verify, memo_path=self.hashes.path) if tasks else ([], "")
        if files is None:
            self.inspect_notes += (f"inspecting the caches as {self.launch.user} through sudo -n failed: {why}",)
            return None
        self.inspected_as = f"{self.launch.user} (sudo -n)"
        out = []
        for need, ids, r, span, err in planned:
            if span is None:
                out.append(NeedState(need, "error", detail=err, problem="unresolved", experiments=ids))
                continue
            out.append(self._need_state(need, ids, tuple(files[span[0]:span[1]]), r))
        return out

    def _inspect(self, need: Need, stores: Mapping[str, str], verify: bool):
        tasks, r = self._tasks(need, stores)
        return tuple(inspect_task(t, verify, self.hashes) for t in tasks), r

    def _elsewhere(self, need: Need) -> Tuple[Tuple[str, str], ...]:
        out = []
        for label, stores in other_cache_locations(self.launch):
            try:
                files, r = self._inspect(need, stores, False)
            except ResolveError:
                return ()
            status, main = _combine(files, r)
            if status == PRESENT:
                out.append((label, stores[r.source if r else "hf"]))
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
