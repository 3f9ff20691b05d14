"""The launch matrix: when the plan needs root (a `governor`, energy measured through perf as
mutation.py does), `--launch` was not given and the doctor is not root, the batch will be started
with some sudo, and which one decides what the processes find. The plausible launches (`sudo`,
`sudo -E`, and the one recommended here) are each evaluated for real, and the matrix says which
experiments each would block, and the command line to type.

The recommendation keeps plain sudo's defaults and points each cache variable (HF_HUB_CACHE,
TORCH_HOME) at a cache that holds what plain sudo's caches miss; HF_HUB_OFFLINE=1 when the plan
loads from the Hub. It is evaluated like the others, so the matrix never claims what it did not check.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from checks.system.energy import energy_request

FAILING = ("missing", "broken")
HUB_KINDS = ("timm", "hf")


@dataclass(frozen=True)
class Row:
    """One launch: how, the experiments it blocks, and per missing need where it is instead."""

    how: str
    blocked: Tuple[str, ...]
    missing: Tuple[dict, ...] = ()
    recommended: bool = False
    env: Tuple[Tuple[str, str], ...] = ()  # variables to export before typing the command


@dataclass(frozen=True)
class Matrix:
    """Why the matrix was evaluated, its rows (recommended last), and the command line to type."""

    reason: str
    rows: Tuple[Row, ...]
    command: str

    def to_json(self) -> dict:
        return {"reason": self.reason, "command": self.command,
                "rows": [{"launch": r.how, "recommended": r.recommended, "blocked": list(r.blocked),
                          "env": dict(r.env), "missing": list(r.missing)} for r in self.rows]}


def needs_root(ctx) -> str:
    """Why the plan can only run as root ("" when it does not need root)."""
    if ctx.plan.governor:
        return f"\"governor\" in {ctx.plan.file}: setting the CPU governor needs root"
    asked, _, why = energy_request(ctx)
    return f"{why} (the RAPL counters need root)" if asked else ""


def applies(launch_given: Optional[str], ctx) -> str:
    """The reason to evaluate the matrix, or "" (a --launch was given, we are root, or no root needed)."""
    if launch_given or os.environ.get("MUTATION_LAUNCH") or os.getuid() == 0:
        return ""
    return needs_root(ctx)


def evaluate_launch(ctx, how: str, environ: Optional[Dict[str, str]] = None):
    """A DoctorContext for `how` (its own discovery, since HOME and PATH change) and its need states."""
    from core.context import DoctorContext
    from core.discover.plan import with_discovered
    from core.launch import build_launch_context
    from core.memo import memo_dir

    launch = build_launch_context(how, environ=environ)
    plan, _ = with_discovered(ctx.plan, ctx.registry, launch.home, launch.env.get("PATH", ""), memo_dir(ctx.options))
    c = DoctorContext(options=dataclasses.replace(ctx.options, launch=how), registry=ctx.registry, plan=plan,
                      launch=launch)
    return c, c.need_states()


def _blocked(c, states) -> Tuple[Tuple[str, ...], List]:
    ids, missing = [], {}
    for e in c.plan.experiments:
        bad = [n for n in e.needs if getattr(n, "blocking", True) and n.key in states
               and states[n.key].status in FAILING]
        if bad:
            ids.append(e.id)
            for n in bad:
                missing.setdefault(n.key, states[n.key])
    return tuple(ids), list(missing.values())


def _cache_vars(missing) -> Dict[str, str]:
    """HF_HUB_CACHE / TORCH_HOME pointing at one cache that holds every missing need of that store."""
    out = {}
    for var, kinds in (("HF_HUB_CACHE", HUB_KINDS), ("TORCH_HOME", ("torchvision",))):
        states = [s for s in missing if s.need.kind in kinds]
        if not states:
            continue
        common = None
        for s in states:
            paths = {p for _, p in s.found_elsewhere}
            common = paths if common is None else common & paths
        if common:
            path = sorted(common)[0]
            out[var] = os.path.dirname(path) if var == "TORCH_HOME" else path
    return out


def _where_else(states_by_launch: Dict[str, dict], how: str, s) -> dict:
    """A missing need of launch `how`, with the other places that have it (other launches' caches too)."""
    elsewhere = [{"label": label, "path": path} for label, path in s.found_elsewhere]
    for other, states in states_by_launch.items():
        o = states.get(s.need.key)
        if other != how and o is not None and o.status == "present" and o.path:
            elsewhere.append({"label": f"what {other} uses", "path": o.path})
    label = s.need.spec.get(s.need.kind)
    return {"need": s.need.key, "what": f"{s.need.kind} {label}", "status": s.status, "path": s.path,
            "present_in": elsewhere}


def evaluate(ctx, reason: str) -> Matrix:
    """The matrix for the plan of `ctx` (see the module docstring)."""
    from core.commands import run_command

    rows, states_by_launch, missing_by_launch = [], {}, {}
    for how in ("sudo", "sudo -E"):
        c, states = evaluate_launch(ctx, how)
        blocked, missing = _blocked(c, states)
        states_by_launch[how], missing_by_launch[how] = states, missing
        rows.append((how, blocked, missing, False, ()))
    plain = missing_by_launch["sudo"]
    chosen = _cache_vars(plain)
    has_hub = any(n.kind in HUB_KINDS for e in ctx.plan.experiments for n in e.needs) or \
        any(s.need.kind in HUB_KINDS for s in states_by_launch["sudo"].values())
    if has_hub:
        chosen["HF_HUB_OFFLINE"] = "1"
    how = "sudo --preserve-env=" + ",".join(chosen) if chosen else "sudo"
    environ = dict(os.environ, **chosen)
    c, states = evaluate_launch(ctx, how, environ=environ) if chosen else (None, states_by_launch["sudo"])
    if c is not None:
        blocked, missing = _blocked(c, states)
        states_by_launch[how] = states
    else:
        blocked, missing = rows[0][1], rows[0][2]
    rows.append((how, blocked, missing, True, tuple(chosen.items())))
    out = tuple(Row(h, b, tuple(_where_else(states_by_launch, h, s) for s in m), rec, env)
                for h, b, m, rec, env in rows)
    words = how.split() if chosen else ["sudo"]
    command = run_command(ctx, words)
    if chosen:
        command = "export " + " ".join(f"{k}={v}" for k, v in chosen.items()) + "\n" + command
    return Matrix(reason=reason, rows=out, command=command)


def for_report(args, ctx, remake):
    """(the context the report is about, the matrix as JSON or None). With a matrix, the report is
    about plain `sudo` (how a batch that needs root is usually started): `remake(launch)` builds it."""
    reason = applies(getattr(args, "launch", None), ctx)
    if not reason:
        return ctx, None
    matrix = evaluate(ctx, reason)
    return remake("sudo"), matrix.to_json()


def to_text(m: dict, total: int) -> str:
    """The matrix (its JSON form) for the terminal: one line per launch, the recommended command last."""
    rows = m["rows"]
    lines = [f"Launch matrix ({m['reason']}; no --launch given):"]
    width = max(len(r["launch"]) for r in rows)
    for r in rows:
        mark = "✓" if not r["blocked"] else "✗"
        extra = "  ← recommended" if r["recommended"] else ""
        lines.append(f"  {mark} {r['launch'].ljust(width)}  {len(r['blocked'])} of {total} blocked{extra}")
        for miss in r["missing"][:6]:
            where = "; ".join(f"in {p['path']} ({p['label']})" for p in miss["present_in"][:3]) or "nowhere else found"
            lines.append(f"      {miss['what']} {miss['status']} at {miss['path']}: {where}")
    lines.append("  type:")
    lines += [f"    $ {line}" for line in m["command"].splitlines()]
    lines.append("  (the report below is about plain sudo; --launch HOW checks one launch)")
    return "\n".join(lines)
