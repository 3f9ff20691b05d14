"""The `settings` group: the history a settings file deduplicates against (`historical_csvs`)."""
from __future__ import annotations

import os
import shlex
from typing import List, Optional

from core.dedup import HistoryError, historical_csvs, read_history_csv
from core.model import WARN, Finding


def _other_root(given: str, ctx) -> Optional[str]:
    """A folder other than the project root where `given` exists (the user's likely project root)."""
    candidates = [os.getcwd()]
    if ctx.plan.file:
        d = os.path.dirname(ctx.plan.file)
        candidates += [d, os.path.dirname(d), os.path.dirname(os.path.dirname(d))]
    for base in dict.fromkeys(candidates):
        if os.path.isfile(os.path.join(base, given)):
            return base
    return None


def check_history(ctx):
    """A historical CSV that is missing or unreadable: the batch would repeat runs already paid for."""
    top = ctx.plan.raw_top
    if not top.get("use_deduplication"):
        return None
    given = top.get("historical_csvs")
    settings = ctx.plan.file or "the settings file"
    if given is not None and not isinstance(given, (list, str)):
        return Finding(id="settings.history-unreadable", group="settings", status=WARN,
                       title="\"historical_csvs\" is not a list of CSV paths: nothing is deduplicated against it",
                       detail=f"{settings}: historical_csvs", fix=(f"write \"historical_csvs\": [\"data/raw_data.csv\"] in {settings}",))
    out: List[Finding] = []
    for name, path in historical_csvs(top, ctx.registry.project_root):
        try:
            read_history_csv(path)
            continue
        except HistoryError as e:
            problem = e.reason
        missing = not os.path.exists(path)
        other = _other_root(name, ctx) if missing and not os.path.isabs(name) else None
        if other:
            fix = f"mutation-doctor --project-root {shlex.quote(other)} -ec {shlex.quote(ctx.plan.file)}"
        elif missing:
            fix = (f"mkdir -p {shlex.quote(os.path.dirname(path))} && cp YOUR/{os.path.basename(path)} {shlex.quote(path)}"
                   f"  # or remove {name!r} from historical_csvs in {settings}")
        elif os.path.isfile(path) and not os.access(path, os.R_OK):
            fix = f"sudo chmod a+r {shlex.quote(path)}"
        else:
            fix = f"head -3 {shlex.quote(path)}  # expected a CSV with experiment_id, repository, model, hyperparam_* columns"
        out.append(Finding(
            id="settings.history-missing" if missing else "settings.history-unreadable", group="settings", status=WARN,
            title=f"historical CSV {path} {'is missing' if missing else 'cannot be read'}: "
                  "runs already in it may be drawn again",
            detail=f"{settings}: historical_csvs: {name!r} -> {path}: {problem}"
                   + (" (relative paths start at the project root, as in mutation.py)" if not os.path.isabs(name) else ""),
            fix=(fix,), data={"path": path, "given": name, "problem": problem}))
    return out or None
