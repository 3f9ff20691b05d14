"""The `settings` group: what the settings file and the registry say, as mutation.py reads them."""
from __future__ import annotations

from core.commands import doctor_command
from core.model import FAIL, OK, Finding


def check_lint(ctx):
    """Findings made while reading the settings file (ignored keys, unknown repos, ...)."""
    return ctx.plan.findings


def check_values(ctx):
    """Values the runner cannot use (core.validate): each blocks the experiments of its entry."""
    from core.validate import check_inputs

    if not ctx.plan.file:
        return None
    out = []
    for p in check_inputs(ctx.plan.file, ctx.registry.path):
        ids = tuple(e.id for e in ctx.plan.experiments if p.entry is None or e.entry_index == p.entry)
        out.append(Finding(id="settings.bad-value", group="settings", status=FAIL, title=f"{p.path}: {p.expected}",
                           detail=p.line(), fix=(f"edit {p.file} at {p.path}: {p.expected}",), experiments=ids,
                           data={"file": p.file, "path": p.path}))
    return out


def check_needs_declared(ctx):
    """A registry without `requires` (the user's own file) cannot tell what models need: say so once."""
    if ctx.registry.declares_needs:
        return None
    return Finding(
        id="settings.no-needs-declared", group="settings", status=OK,
        title="the model registry declares no needs: they are discovered in the repos' code",
        detail=f"{ctx.registry.path} has no \"requires\" entries; what each model needs is read from its train "
               "script and Python files (an experiment none of whose needs is established is unverified)",
        fix=(doctor_command(ctx, "needs") + "  # review; declare what is wrong as \"requires\" "
             "(see settings/models_config.json)",))
