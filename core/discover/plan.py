"""Discovered needs fed into a plan where declared `requires` go: each Side's `needs`.

Discovery is evaluated as the launched process sees the world (its HOME expands `~` and `$HOME`
in train.sh, its PATH resolves a bare `python`), so a plan is discovered per launch context.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, Optional, Tuple

from core.discover import Found, RepoNeeds, SourceMemo, discover_repo


def discover_for_plan(plan, registry, home: str, path_env: str, memo_path: Optional[str] = None,
                      observed=None) -> Dict[str, RepoNeeds]:
    """Discovery for the repos the plan uses (every repo of the registry for a registry plan);
    `observed`: see core.discover.discover_repo."""
    used = {s.repo for e in plan.experiments for s in e.sides}
    memo = SourceMemo(memo_path)
    out = {name: discover_repo(memo, spec, home, path_env, observed) for name, spec in registry.repos.items()
           if name in used}
    memo.save()
    return out


def _with_provenance(f: Found):
    """The Found's Need, carrying its provenance, confidence and blocking where Need has those fields."""
    names = {fl.name for fl in dataclasses.fields(f.need)}
    extra = {k: v for k, v in (("provenance", f.provenance), ("confidence", f.confidence), ("blocking", f.blocking),
                               ("detail", f.detail)) if k in names}
    return dataclasses.replace(f.need, **extra) if extra else f.need


def side_needs(found: Dict[str, RepoNeeds], repo: str, model: str) -> Tuple:
    """The needs of one side: declared first, then discovered (blocking before candidates)."""
    rn = found.get(repo)
    if rn is None:
        return ()
    items = [f for f in rn.models.get(model, ()) if f.need is not None]
    items.sort(key=lambda f: not f.blocking)
    seen, out = set(), []
    for f in items:
        if f.need.key not in seen:
            seen.add(f.need.key)
            out.append(_with_provenance(f))
    return tuple(out)


def with_discovered(plan, registry, home: str, path_env: str, memo_dir: Optional[str] = None, observed=None):
    """(the plan with every side's needs declared, observed and discovered, the discovery per repo)."""
    memo_path = os.path.join(memo_dir, "discover.json") if memo_dir else None
    found = discover_for_plan(plan, registry, home, path_env, memo_path, observed)

    def side(s):
        return dataclasses.replace(s, needs=side_needs(found, s.repo, s.model)) if s is not None else None

    exps = tuple(dataclasses.replace(e, foreground=side(e.foreground), background=side(e.background))
                 for e in plan.experiments)
    return dataclasses.replace(plan, experiments=exps), found
