"""Renderers for a doctor Report: JSON (stable schema), terminal (rich) and Markdown."""
from __future__ import annotations

import os
from typing import Dict, List

from core.launch import RELEVANT_VARS, which
from core.model import Finding, Report
from core.secrets import mask, mask_text
from core.vocab import ERROR, FAIL, FINDING_STATUSES, FORMAT_VERSION, GROUPS, OK, PASS, STATUS_ORDER, UNVERIFIED, WARN
GROUP_TITLES = {"settings": "Settings file and registry", "cache": "Weights, data and interpreters",
                "env": "Environment of the launched process", "network": "Network reachability of the hubs",
                "system": "Machine: GPU, energy counters, disk, ownership"}
MARK = {OK: "✓", WARN: "!", FAIL: "✗", ERROR: "✗"}
STYLE = {OK: "green", WARN: "yellow", FAIL: "red", ERROR: "magenta"}


def report_console(stderr: bool = False):
    """A rich console for reports: fits the terminal; piped or redirected, lines are not wrapped or
    cropped (200 columns for tables), so ids and fix commands stay whole and pasteable."""
    from rich.console import Console

    con = Console(stderr=stderr, highlight=False, soft_wrap=True)
    return con if con.is_terminal else Console(stderr=stderr, highlight=False, soft_wrap=True, width=200)


def launch_dict(report: Report) -> dict:
    ctx = report.launch
    env = ctx.env
    return {
        "how": ctx.how, "source": ctx.source, "user": ctx.user, "uid": ctx.uid, "home": ctx.home, "cwd": ctx.cwd,
        "hf_cache": ctx.hf_cache, "torch_hub": ctx.torch_hub, "caches": dict(ctx.caches), "offline": ctx.offline,
        "python3": which("python3", env), "invoking_user": ctx.invoking_user, "invoking_uid": ctx.invoking_uid,
        "invoking_home": ctx.invoking_home,
        "env": {k: mask(k, env[k]) for k in RELEVANT_VARS if k in env},
        "notes": list(ctx.notes),
    }


def finding_dict(f: Finding, env) -> dict:
    return {"id": f.id, "group": f.group, "status": f.status, "title": mask_text(f.title, env),
            "detail": mask_text(f.detail, env), "fix": [mask_text(x, env) for x in f.fix],
            "experiments": list(f.experiments),
            "data": dict(f.data)}


def summary(report: Report) -> dict:
    counts = {s: 0 for s in FINDING_STATUSES}
    for f in report.findings:
        counts[f.status] += 1
    blocked, unverified = len(report.blocked), len(report.unverified)
    return {"experiments": len(report.verdicts), "pass": len(report.verdicts) - blocked - unverified,
            "blocked": blocked, "unverified": unverified,
            "findings": counts, "exit_code": report.exit_code, "elapsed_seconds": round(report.elapsed, 3),
            "settings_file": report.settings_file or None, "models_config": report.models_config,
            "groups": list(report.groups)}


def to_json(report: Report) -> dict:
    """The `--json` object: format_version 1; keys are stable, new keys may be added."""
    env = report.launch.env
    return {
        "format_version": FORMAT_VERSION,
        "launch": launch_dict(report),
        "findings": [finding_dict(f, env) for f in report.findings],
        "experiments": [{"id": v.experiment.id, "repo": v.experiment.repo, "model": v.experiment.model,
                         "mode": v.experiment.mode,
                         "background": ({"repo": v.experiment.background.repo, "model": v.experiment.background.model}
                                        if v.experiment.background else None),
                         "source": v.experiment.source, "verdict": v.verdict, "blocked_by": list(v.blocked_by),
                         **({"reason": v.reason} if v.reason else {})}
                        for v in report.verdicts],
        "summary": summary(report),
        **({"launch_matrix": dict(report.launch_matrix)} if report.launch_matrix else {}),
        **({"needs_lock": report.needs_lock} if report.needs_lock else {}),
    }


def group_status(findings: List[Finding]) -> str:
    return max((f.status for f in findings), key=STATUS_ORDER.get, default=OK)


def _by_group(report: Report) -> Dict[str, List[Finding]]:
    out: Dict[str, List[Finding]] = {g: [] for g in GROUPS if g in report.groups}
    for f in report.findings:
        out.setdefault(f.group, []).append(f)
    return out


def _summary_line(report: Report) -> str:
    s = summary(report)
    c = s["findings"]
    parts = [f"{s['pass']} of {s['experiments']} experiment(s) can run", f"{s['blocked']} blocked"]
    if s["unverified"]:
        parts.append(f"{s['unverified']} unverified (nothing they need could be established)")
    parts += [f"{c[FAIL]} problem(s)", f"{c[WARN]} warning(s)"]
    if c[ERROR]:
        parts.append(f"{c[ERROR]} check(s) crashed")
    return ", ".join(parts) + f" ({s['elapsed_seconds']:.2f} s)"


def render_terminal(report: Report, console, verbose: bool = False) -> None:
    """flutter-doctor style: one line per group, its findings with fixes, the experiments, one summary."""
    from rich.markup import escape
    from rich.table import Table

    env = report.launch.env
    ctx = report.launch
    if report.launch_matrix:
        from doctor.launchmatrix import to_text

        console.print(escape(to_text(report.launch_matrix, len(report.verdicts))))
        console.print()
    console.print(f"[bold]Launch:[/bold] {escape(ctx.how)} as {escape(ctx.user)} (uid {ctx.uid}), HOME={escape(ctx.home)}"
                  f" [dim]({ctx.source})[/dim]")
    console.print(f"  Hugging Face cache: {escape(ctx.hf_cache)}   torch hub: {escape(ctx.torch_hub)}"
                  f"   offline: {'yes' if ctx.offline else 'no'}")
    if report.needs_lock:
        console.print(f"  needs lock: {escape(report.needs_lock)}"
                      + ("" if os.path.isfile(report.needs_lock) else " (none yet: mutation-run writes it after a successful run)"))
    for group, findings in _by_group(report).items():
        st = group_status(findings)
        console.print(f"[{STYLE[st]}][{MARK[st]}][/{STYLE[st]}] [bold]{GROUP_TITLES.get(group, group)}[/bold]")
        shown = sorted(findings, key=lambda f: -STATUS_ORDER[f.status])
        hidden = 0
        for f in shown:
            if f.status == OK and not verbose:
                hidden += 1
                continue
            console.print(f"    [{STYLE[f.status]}]{MARK[f.status]}[/{STYLE[f.status]}] {escape(mask_text(f.title, env))}"
                          f" [dim]{escape(f.id)}[/dim]")
            if f.status == ERROR and not verbose:
                continue  # a crashed check is one line; -v adds the fix and the traceback
            if f.detail and (verbose or f.status != OK):
                console.print(f"      {escape(mask_text(f.detail, env))}", style="dim")
            if f.experiments and f.status != OK:
                ids = ", ".join(f.experiments[:4]) + (f" (+{len(f.experiments) - 4} more)" if len(f.experiments) > 4 else "")
                console.print(f"      affects: {escape(ids)}")
            for fix in f.fix:
                console.print(f"      [cyan]$[/cyan] {escape(mask_text(fix, env))}", soft_wrap=True)
            if verbose and "traceback" in f.data:
                console.print(escape(str(f.data["traceback"])), style="dim")
        if hidden:
            console.print(f"    [dim]{hidden} check(s) fine (-v to list)[/dim]")
    if report.verdicts:
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for col in ("experiment", "mode", "verdict", "blocked by"):
            table.add_column(col)
        rows = report.verdicts if verbose or len(report.verdicts) <= 40 else report.blocked + report.unverified
        for v in rows:
            style = {PASS: "green", UNVERIFIED: "yellow"}.get(v.verdict, "red")
            table.add_row(escape(v.experiment.id), v.experiment.mode, f"[{style}]{v.verdict}[/{style}]",
                          escape(", ".join(v.blocked_by) or v.reason))
        console.print()
        console.print(table)
        if rows is not report.verdicts:
            console.print(f"[dim]{len(report.verdicts) - len(rows)} passing experiment(s) not listed (-v)[/dim]")
    console.print()
    worst = FAIL if report.exit_code == 1 else (WARN if report.exit_code or any(f.status in (WARN, ERROR)
                                                                               for f in report.findings) else OK)
    console.print(f"[{STYLE[worst]}]{MARK[worst]}[/{STYLE[worst]}] {_summary_line(report)}")


def to_markdown(report: Report) -> str:
    """The same content as the terminal, as a Markdown document for a bug report or a lab notebook."""
    env = report.launch.env
    ld = launch_dict(report)
    lines = ["# mutation-doctor report", "",
             f"- launch: `{ld['how']}` as `{ld['user']}` (uid {ld['uid']}), HOME `{ld['home']}` ({ld['source']})",
             f"- Hugging Face cache: `{ld['hf_cache']}`; torch hub: `{ld['torch_hub']}`; offline: {ld['offline']}",
             f"- settings: `{report.settings_file or '(registry)'}`; registry: `{report.models_config}`", ""]
    for group, findings in _by_group(report).items():
        st = group_status(findings)
        lines += [f"## [{MARK[st]}] {GROUP_TITLES.get(group, group)}", ""]
        for f in sorted(findings, key=lambda f: -STATUS_ORDER[f.status]):
            lines.append(f"- **{f.status}** `{f.id}`: {mask_text(f.title, env)}")
            if f.detail:
                lines.append(f"  - {mask_text(f.detail, env)}")
            if f.experiments and f.status != OK:
                lines.append(f"  - affects: {', '.join(f.experiments)}")
            for fix in f.fix:
                lines.append(f"  - fix: `{mask_text(fix, env)}`")
        lines.append("")
    lines += ["## Experiments", "", "| experiment | mode | verdict | blocked by |", "|---|---|---|---|"]
    for v in report.verdicts:
        lines.append(f"| {v.experiment.id} | {v.experiment.mode} | {v.verdict} | {', '.join(v.blocked_by) or v.reason} |")
    lines += ["", _summary_line(report), ""]
    return "\n".join(lines)
