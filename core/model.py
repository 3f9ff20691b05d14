"""The data model: experiments, their needs, the launch context, findings and verdicts.

Frozen dataclasses describe the world; functions elsewhere compute them; renderers print them.
Nothing in this module imports a heavy library or prints.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Optional, Tuple

from core import needs
from core.needs.hf import is_offline

from core.vocab import BLOCKED, ERROR, FAIL, GROUPS, OK, STATUS_ORDER, UNVERIFIED, WARN  # noqa: F401 - re-exported


@dataclass(frozen=True)
class Need:
    """One external thing a model needs at run time, as declared in the registry's `requires`.

    `kind` is one of the kinds registered in core.needs (timm, torchvision, hf, path, python, gpu,
    gpu_memory_gb); its adapter there owns validation, key, resolution and cache location.
    `spec` is the declaration as written (for example `{"timm": "hrnet_w18"}`); `repo_dir` is the
    absolute folder of the repo, against which relative paths are resolved.
    `provenance` says where it was learnt (`declared`, `discovered train.sh:70`, `observed in
    run_<ts>/<id>`; see core.discover), `confidence` how sure that is; a need that is not `blocking`
    (a candidate discovery could not attribute) only warns when missing. These do not take part in
    equality: the same need learnt twice is one need.
    """

    kind: str
    spec: Mapping[str, Any]
    repo: str
    repo_dir: str
    provenance: str = field(default="declared", compare=False)
    confidence: float = field(default=1.0, compare=False)
    blocking: bool = field(default=True, compare=False)
    detail: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        """A stable, human-readable identity, used to deduplicate needs shared by experiments."""
        return needs.key_for(self.kind, self.spec, self.repo_dir)

    @property
    def adapter(self) -> "needs.NeedKind":
        """The adapter of this need's kind (core.needs)."""
        return needs.adapter(self.kind)

    @property
    def resolved_path(self) -> str:
        """For `path` needs: the absolute path, `~` taken from this process's HOME."""
        import os.path

        return self.path_for(os.path.expanduser("~"))

    def path_for(self, home: str) -> str:
        """For `path` and `python` needs: the absolute path as a process whose HOME is `home` sees it
        (a train.sh run under sudo expands `~` to /root); relative paths start at the repo folder."""
        return needs.local_path(self.spec, self.repo_dir, home)


@dataclass(frozen=True)
class Side:
    """One training process of an experiment: the foreground, or a parallel experiment's background."""

    repo: str
    model: str
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    mutate: Tuple[str, ...] = ()
    needs: Tuple[Need, ...] = ()


@dataclass(frozen=True)
class Experiment:
    """One experiment as the runner will launch it (`runs_per_config` already expanded).

    `mode` is `default`, `mutation` or `parallel` (as mutation.py interprets the entry);
    `source` is where it came from (`file.json:experiments[3]`) so findings can point at it.
    """

    id: str
    mode: str
    foreground: Side
    background: Optional[Side] = None
    run_index: int = 0
    source: str = ""
    entry_index: int = -1

    @property
    def repo(self) -> str:
        return self.foreground.repo

    @property
    def model(self) -> str:
        return self.foreground.model

    @property
    def sides(self) -> Tuple[Side, ...]:
        return (self.foreground,) + ((self.background,) if self.background else ())

    @property
    def needs(self) -> Tuple[Need, ...]:
        seen, out = set(), []
        for side in self.sides:
            for n in side.needs:
                if n.key not in seen:
                    seen.add(n.key)
                    out.append(n)
        return tuple(out)


@dataclass(frozen=True)
class LaunchContext:
    """What the experiment process will get: its environment, HOME, user, interpreter and cwd.

    `how` names the launch (`current`, `sudo`, `sudo -E`, `sudo --preserve-env=A,B`);
    `source` says how it was learnt (`self`: this process is the launch; `simulated`: sudo's
    defaults applied to our environment; `real`: asked from the real sudo).
    `invoking_*` describe the user who typed the command (SUDO_USER when we run under sudo).
    """

    how: str
    source: str
    env: Mapping[str, str]
    user: str
    uid: int
    gid: int
    home: str
    cwd: str
    invoking_user: str
    invoking_uid: int
    invoking_home: str
    invoking_env: Mapping[str, str] = field(default_factory=dict)
    notes: Tuple[str, ...] = ()

    @property
    def caches(self) -> Mapping[str, str]:
        """The cache folder of every kind that downloads into one (core.needs), as this process sees it."""
        return MappingProxyType(needs.cache_dirs(self.env, self.home))

    @property
    def stores(self) -> Mapping[str, str]:
        """The cache folder of every store ("hf", "torchhub"): where a Resolved need's files go."""
        return MappingProxyType(needs.store_dirs(self.env, self.home))

    @property
    def hf_cache(self) -> str:
        return self.stores["hf"]

    @property
    def torch_hub(self) -> str:
        return self.stores["torchhub"]

    @property
    def offline(self) -> bool:
        return is_offline(self.env)


@dataclass(frozen=True)
class Finding:
    """The outcome of a check: a stable dotted id, a status, words, and the commands that fix it.

    `experiments` lists the ids of the experiments this finding concerns; a `fail` finding blocks
    them. `data` carries machine-readable details (paths, sizes) for JSON consumers.
    """

    id: str
    group: str
    status: str
    title: str
    detail: str = ""
    fix: Tuple[str, ...] = ()
    experiments: Tuple[str, ...] = ()
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def blocks(self) -> bool:
        return self.status == FAIL and bool(self.experiments)


@dataclass(frozen=True)
class Verdict:
    """Whether an experiment may run (`pass`), is held back (`blocked`, by which findings), or
    none of what it needs could be established (`unverified`, and `reason` says why)."""

    experiment: Experiment
    verdict: str
    blocked_by: Tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class Report:
    """Everything one doctor run learnt, ready for a renderer or the runner."""

    launch: LaunchContext
    findings: Tuple[Finding, ...]
    verdicts: Tuple[Verdict, ...]
    settings_file: str = ""
    models_config: str = ""
    groups: Tuple[str, ...] = GROUPS
    elapsed: float = 0.0
    needs_lock: str = ""  # the needs lock the doctor read (core.needslock), shown in the header
    launch_matrix: Optional[Mapping[str, Any]] = None  # doctor.launchmatrix, when it was evaluated

    @property
    def blocked(self) -> Tuple[Verdict, ...]:
        return tuple(v for v in self.verdicts if v.verdict == BLOCKED)

    @property
    def unverified(self) -> Tuple[Verdict, ...]:
        return tuple(v for v in self.verdicts if v.verdict == UNVERIFIED)

    @property
    def exit_code(self) -> int:
        """0: every experiment can run; 1: something blocked, failing, or a check that crashed (so
        unknown); 3: nothing blocked or failing, but some experiment unverified."""
        if self.blocked or any(f.status in (FAIL, ERROR) for f in self.findings):
            return 1
        return 3 if self.unverified else 0
