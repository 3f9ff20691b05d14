"""Runs the registered checks concurrently and turns their findings into verdicts."""
from __future__ import annotations

import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, List, Optional, Sequence, Tuple

from checks import CHECKS, Check
from core import needslock
from core.commands import doctor_command
from core.context import DoctorContext
from core.discover.established import unverified
from core.model import Finding, Report, Verdict
from core.secrets import mask_text
from core.vocab import BLOCKED, ERROR, FAIL, PASS, UNVERIFIED


def _as_list(result) -> List[Finding]:
    if result is None:
        return []
    if isinstance(result, Finding):
        return [result]
    return [f for f in result if f is not None]


def crash_finding(check: Check, error: BaseException, tb: str, ctx: DoctorContext) -> Finding:
    """The `error` finding of a check that raised: one line naming the check and the exception's
    first line; the (masked) traceback in `data` for -v and --json."""
    env = ctx.launch.env
    lines = str(error).strip().splitlines()
    message = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return Finding(id=f"{check.group}.{check.name}.crashed", group=check.group, status=ERROR,
                   title=mask_text(f"the check \"{check.title}\" ({check.group}.{check.name}) crashed: {message}", env),
                   fix=(f"{doctor_command(ctx)} --only {check.group} -v  # shows the traceback to report",),
                   data={"exception": mask_text(message, env), "traceback": mask_text(tb, env)})


def run_check(check: Check, ctx: DoctorContext) -> List[Finding]:
    """One check; a crash becomes an `error` finding instead of stopping the doctor."""
    try:
        return _as_list(check.load()(ctx))
    except Exception as e:  # noqa: BLE001 - any crash of a check is reported, never fatal
        return [crash_finding(check, e, traceback.format_exc(limit=6), ctx)]


def verdicts(experiments, findings: Iterable[Finding], unverified=None) -> Tuple[Verdict, ...]:
    """An experiment is blocked by every `fail` finding that names it; otherwise it is unverified
    when `unverified` ({id: why}) names it, else it passes."""
    blockers = {}
    for f in findings:
        if f.status == FAIL:
            for eid in f.experiments:
                blockers.setdefault(eid, []).append(f.id)
    unverified = unverified or {}
    out = []
    for e in experiments:
        ids = tuple(dict.fromkeys(blockers.get(e.id, ())))
        if not ids and e.id in unverified:
            out.append(Verdict(experiment=e, verdict=UNVERIFIED, reason=unverified[e.id]))
            continue
        out.append(Verdict(experiment=e, verdict=BLOCKED if ids else PASS, blocked_by=ids))
    return tuple(out)


def run_doctor(ctx: DoctorContext, checks: Optional[Sequence[Check]] = None, progress=None) -> Report:
    """All selected checks, concurrently; `progress(check, findings)` is called as each finishes."""
    t0 = time.monotonic()
    selected = [c for c in (checks if checks is not None else CHECKS) if c.group in ctx.options.groups]
    findings: List[Finding] = []
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(selected)))) as pool:
        futures = [(c, pool.submit(run_check, c, ctx)) for c in selected]
        for c, fut in futures:
            result = fut.result()
            if progress is not None:
                progress(c, result)
            findings.extend(result)
    return Report(launch=ctx.launch, findings=tuple(findings),
                  verdicts=verdicts(ctx.plan.experiments, findings, unverified(ctx)),
                  settings_file=ctx.plan.file, models_config=ctx.registry.path, groups=tuple(ctx.options.groups),
                  elapsed=time.monotonic() - t0, needs_lock=needslock.path_for(ctx.options, ctx.registry.path))
