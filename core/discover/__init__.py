"""Zero-configuration needs: what each model of the registry needs, read from the repo's own code.

The launch script gives the interpreter (with its line), the entry file, the data paths it
assigns and the flags each model gets; the Python files give the pretrained loads, dataset
downloads and path defaults, attributed to the models whose flags reach them. Nothing of the
user's is imported or run. Every need carries its provenance and a confidence:

- `declared` (the registry's `requires`; a declared kind overrides what was discovered of that kind),
- `discovered train.sh:70` / `discovered model.py:229` (attributed: blocks when missing),
- candidates (unattributed, or a name known only at run time): they only warn.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

from core.discover.attribute import MAYBE, YES, Reached
from core.discover.repo import SourceMemo, model_launch, repo_loads, script_path
from core.discover.script import ScriptFacts, Unresolved
from core.discover.pysource import path_defaults
from core.model import Need

DECLARED, CONF_LITERAL, CONF_ACTIVATE, CONF_PATH, CONF_ATTRIBUTED, CONF_CANDIDATE = 1.0, 0.95, 0.85, 0.7, 0.9, 0.4
CHECKABLE = ("timm", "torchvision", "hf", "path", "python", "url")


@dataclass(frozen=True)
class Found:
    """One need of one model (`model` "*": of the whole repo) and where it was learnt.

    `need` is None when the kind cannot be inspected (a torch.hub repo, a URL, a whole snapshot)
    or the name is only known at run time (`unresolved` says why). `blocking`: declared and
    attributed needs block when missing; candidates only warn."""

    kind: str
    spec: Mapping
    repo: str
    model: str
    provenance: str
    confidence: float
    blocking: bool
    need: Optional[Need] = None
    detail: str = ""
    unresolved: str = ""

    @property
    def label(self) -> str:
        value = self.spec.get(self.kind, "?")
        extra = self.spec.get("weights") or ("pretrained" if self.spec.get("pretrained") else "")
        return f"{self.kind} {value}" + (f" ({extra})" if extra else "")


@dataclass(frozen=True)
class RepoNeeds:
    """Discovery for one repo: per model its needs, the repo's unattributed candidates, and what
    could not be followed."""

    repo: str
    script: str
    models: Mapping[str, Tuple[Found, ...]]
    candidates: Tuple[Found, ...] = ()
    facts: Mapping[str, ScriptFacts] = field(default_factory=dict)
    unresolved: Tuple[Unresolved, ...] = ()


def _need(kind: str, spec: Mapping, repo: str, repo_dir: str) -> Optional[Need]:
    if kind not in CHECKABLE or any(v == "?" for v in spec.values()):
        return None
    clean = {k: v for k, v in spec.items() if k != "downloads"}
    return Need(kind=kind, spec=clean, repo=repo, repo_dir=repo_dir)


def _found(kind, spec, repo, repo_dir, model, provenance, confidence, blocking, detail="", unresolved="") -> Found:
    need = None if unresolved else _need(kind, spec, repo, repo_dir)
    return Found(kind, dict(spec), repo, model, provenance, confidence, blocking and need is not None, need,
                 detail, unresolved)


def _script_needs(repo: str, repo_dir: str, model: str, facts: ScriptFacts) -> List[Found]:
    out = []
    name = os.path.basename(facts.script)
    it = facts.interpreter
    if it is not None:
        conf = {"literal": CONF_LITERAL, "activate": CONF_ACTIVATE}.get(it.how, CONF_PATH)
        detail = {"literal": "written in the script", "activate": "activated environment",
                  "path": "bare python on the launched PATH"}[it.how]
        if it.fallbacks:
            detail += f"; when missing, the loop at {name}:{it.fallback_line} tries " + ", ".join(it.fallbacks[:5])
        out.append(_found("python", {"python": it.path}, repo, repo_dir, model, f"discovered {name}:{it.line}",
                          conf, True, detail))
    for var, path, line in facts.data:
        out.append(_found("path", {"path": path, "kind": "dataset"}, repo, repo_dir, model,
                          f"discovered {name}:{line}", CONF_ATTRIBUTED, True, f"{var} in the script"))
    return out


def _load_found(repo: str, repo_dir: str, model: str, r: Reached, blocking: bool, why: str = "") -> Found:
    load = r.load
    detail = " -> ".join(r.chain)
    if r.text:
        detail += f": {r.text}"
    unresolved = load.get("unresolved", "")
    conf = CONF_ATTRIBUTED if blocking and not unresolved else CONF_CANDIDATE
    return _found(load["kind"], load["spec"], repo, repo_dir, model, f"discovered {r.file}:{r.line}", conf,
                  blocking and not unresolved, detail + (f" ({why})" if why else ""), unresolved)


def _model_needs(memo: SourceMemo, spec, model: str, home: str, path_env: str):
    facts, reached, _ = model_launch(memo, spec.path, spec.train_script, model, spec.model_flag,
                                     tuple(spec.required_args), home, path_env)
    found: List[Found] = []
    if facts is None:
        return None, found, set()
    found += _script_needs(spec.name, spec.path, model, facts)
    for r in reached:
        found.append(_load_found(spec.name, spec.path, model, r, r.status == YES,
                                 "" if r.status == YES else "reached only under a condition known at run time"))
    if facts.entry and not facts.entry.startswith("-m "):
        entry_path = os.path.join(spec.path, facts.entry)
        entry = memo.summary(entry_path) or {}
        problem = entry.get("error") or ("" if entry else "the entry file is missing or unreadable")
        if problem:
            facts = dataclasses.replace(facts, unresolved=facts.unresolved + (
                Unresolved(entry_path, 0, facts.entry, f"{problem}: its loads cannot be followed"),))
        passed = set(w.split("=", 1)[0] for w in facts.argv)
        for a in path_defaults(entry):
            if not passed & set(a.get("options", [])):
                found.append(_found("path", {"path": a["default"], "kind": "dataset"}, spec.name, spec.path, model,
                                    f"discovered {facts.entry}:{a['line']}", CONF_CANDIDATE, False,
                                    f"default of {'/'.join(a['options'])}, not passed by the script"))
    return facts, found, {(r.file, r.line) for r in reached}


def _dedupe(found: List[Found]) -> List[Found]:
    """One Found per need: the same weights loaded at two places keep both provenances."""
    out: Dict[str, Found] = {}
    rest = []
    for f in found:
        if f.need is None:
            rest.append(f)
            continue
        key = f.need.key
        old = out.get(key)
        if old is None:
            out[key] = f
        elif f.blocking and not old.blocking:
            out[key] = f
        elif f.blocking == old.blocking:
            same = old.provenance.split(" ", 1)[0] == f.provenance.split(" ", 1)[0]
            extra = f.provenance.split(" ", 1)[-1] if same else f.provenance
            out[key] = dataclasses.replace(old, provenance=old.provenance + (", " if same else "; ") + extra,
                                           detail="; ".join(d for d in (old.detail, f.detail) if d))
    return list(out.values()) + rest


def _merge_declared(found: List[Found], declared: Tuple[Need, ...], model: str) -> Tuple[Found, ...]:
    """Declared needs first; a declared kind replaces the discovered needs of that kind."""
    kinds = {n.kind for n in declared}
    weights = {"timm", "torchvision", "hf"}
    if kinds & weights:
        kinds |= weights
    out = [Found(n.kind, dict(n.spec), n.repo, model, "declared", DECLARED, True, n) for n in declared]
    keys = {n.key for n in declared}
    for f in _dedupe(found):
        if f.kind in kinds or (f.need is not None and f.need.key in keys):
            continue
        out.append(f)
    return tuple(out)


def discover_repo(memo: SourceMemo, spec, home: str, path_env: str, observed=None) -> RepoNeeds:
    """Discovery for one registry repo (a core.registry.RepoSpec) as a process with HOME `home`
    and PATH `path_env` would launch it. `observed(repo, repo_dir, model)`: Found records of what
    successful runs used (the needs lock, `observed in run_<ts>/<id>`), placed before what the code says."""
    models, facts_by_model, touched, unresolved = {}, {}, set(), []
    for model in spec.models:
        facts, found, seen = _model_needs(memo, spec, model, home, path_env)
        if observed is not None:
            found = list(observed(spec.name, spec.path, model)) + found
        touched |= seen
        if facts is not None:
            facts_by_model[model] = facts
            unresolved += [u for u in facts.unresolved if u not in unresolved]
        declared = tuple(spec.requires.get("*", ())) + tuple(spec.requires.get(model, ()))
        from core.registry import need_kind

        dneeds = tuple(Need(kind=need_kind(d), spec=d, repo=spec.name, repo_dir=spec.path) for d in declared)
        models[model] = _merge_declared(found, dneeds, model)
    spath = script_path(spec.path, spec.train_script)
    if not os.path.isfile(spath):
        unresolved.append(Unresolved(spath, 0, spec.train_script, "the train script does not exist"))
    candidates = tuple(_load_found(spec.name, spec.path, "*", r, False, "no model of the registry is shown to reach it")
                       for r in repo_loads(memo, spec.path) if (r.file, r.line) not in touched)
    return RepoNeeds(spec.name, spath, models, candidates,
                     facts_by_model, tuple(unresolved))


def discover(registry, home: str, path_env: str, memo: Optional[SourceMemo] = None) -> Dict[str, RepoNeeds]:
    """Discovery for every repo of a core.registry.Registry."""
    memo = memo or SourceMemo(None)
    out = {name: discover_repo(memo, spec, home, path_env) for name, spec in registry.repos.items()}
    memo.save()
    return out


__all__ = ["Found", "RepoNeeds", "SourceMemo", "discover", "discover_repo", "MAYBE", "YES"]
