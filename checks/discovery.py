"""What needs discovery could not settle: constructs of the repos' code it cannot follow statically
(file:line and why), and pretrained loads no model of the registry is shown to reach. Both only
warn; the needs that were settled are checked by the cache group like declared ones."""
from __future__ import annotations

import os

from core.commands import doctor_command
from core.discover.plan import discover_for_plan
from core.memo import memo_dir
from core.model import WARN, Finding


def check_discovery(ctx):
    """Unresolved constructs and unattributed loads of the repos the plan runs."""
    found = discover_for_plan(ctx.plan, ctx.registry, ctx.launch.home, ctx.launch.env.get("PATH", ""),
                              os.path.join(memo_dir(ctx.options), "discover.json"))
    fix = (doctor_command(ctx, "needs") + "  # then declare what is wrong in the registry's requires",)
    out = []
    for repo, rn in found.items():
        ids = tuple(e.id for e in ctx.plan.experiments if any(s.repo == repo for s in e.sides))
        if rn.unresolved:
            shown = "; ".join(f"{u.where}: {u.why}" + (f" ({u.text})" if u.text else "") for u in rn.unresolved[:6])
            out.append(Finding(id="settings.discovery.unresolved", group="settings", status=WARN,
                               title=f"{repo}: {len(rn.unresolved)} construct(s) cannot be followed without running them",
                               detail=shown, fix=fix, experiments=ids,
                               data={"repo": repo, "unresolved": [{"file": u.file, "line": u.line, "why": u.why}
                                                                  for u in rn.unresolved]}))
        if rn.candidates:
            shown = "; ".join(f"{c.label} ({c.provenance.split(' ', 1)[-1]})" for c in rn.candidates[:8])
            out.append(Finding(id="settings.discovery.unattributed", group="settings", status=WARN,
                               title=f"{repo}: {len(rn.candidates)} pretrained load(s) no model of the registry is "
                                     "shown to reach",
                               detail=shown, fix=fix, experiments=(),
                               data={"repo": repo, "loads": [{"what": c.label, "provenance": c.provenance}
                                                             for c in rn.candidates]}))
    return out
