"""Weights that changed since the recorded runs: a locked weight file present where the launched
process looks, with another sha256 than the needs lock records. A warning by default, a failure
with `--locked` (the batch must use exactly what the recorded runs used). Missing locked files are
reported by the cache group, since the lock's entries are needs of the plan (core.discover)."""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

from core.commands import prefetch_fix, quote
from core.model import Finding
from core.vocab import FAIL, WARN


def _pairs(ctx) -> Dict[Tuple[str, str], List[str]]:
    out: Dict[Tuple[str, str], List[str]] = {}
    for e in ctx.plan.experiments:
        for side in e.sides:
            out.setdefault((side.repo, side.model), []).append(e.id)
    return out


def check_locked_weights(ctx):
    from core import needslock

    path = needslock.path_for(ctx.options, ctx.registry.path)
    if not os.path.isfile(path):
        return None
    try:
        lock = needslock.read(path)
    except needslock.LockError as e:
        return [Finding(id="cache.lock.unreadable", group="cache", status=WARN, title="the needs lock cannot be used",
                        detail=str(e), fix=(quote("rm", path) + "  # the next successful mutation-run writes it again",))]
    pairs = _pairs(ctx)
    strict = bool(getattr(ctx.options, "locked", False))
    out = []
    for c in needslock.changed(lock, list(pairs), ctx.launch.hf_cache, ctx.launch.torch_hub, ctx.hashes.sha256):
        out.append(Finding(
            id="cache.locked.changed", group="cache", status=FAIL if strict else WARN,
            title=f"{c.what}: the weights changed since the recorded runs",
            detail=(f"{c.path} has sha256 {c.sha256}; {path} records {c.locked_sha256} ({c.provenance})"
                    + ("" if strict else "; --locked makes this a failure")),
            fix=(quote("rm", c.path) + "  # then fetch the locked revision again:", prefetch_fix(ctx)),
            experiments=tuple(pairs[(c.repo, c.model)]),
            data={"path": c.path, "sha256": c.sha256, "locked_sha256": c.locked_sha256, "lock": path,
                  "provenance": c.provenance}))
    return out
