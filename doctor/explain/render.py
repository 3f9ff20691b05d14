"""Renderers for explanations: JSON, the Markdown batch report, the terminal, the rerun file."""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

from core.secrets import mask_text
from doctor.explain.model import (BLOCKED, FAILED, SUCCEEDED, SUSPICIOUS, BatchReport, Explanation)

from core.vocab import FORMAT_VERSION
MARK = {SUCCEEDED: "✓", FAILED: "✗", BLOCKED: "⊘", SUSPICIOUS: "!"}
STYLE = {SUCCEEDED: "green", FAILED: "red", BLOCKED: "yellow", SUSPICIOUS: "yellow"}


# --------------------------------------------------------------------------- JSON

def explanation_json(e: Explanation) -> Dict[str, Any]:
    return {
        "experiment_id": e.experiment_id,
        "path": e.path,
        "status": e.status,
        "cause": None if e.cause is None else {"id": e.cause.id, "title": e.cause.title,
                                               "confidence": e.cause.confidence},
        "evidence": [{"file": v.file, "line": v.line, "text": v.text} for v in e.evidence],
        "chain": list(e.chain),
        "fix": list(e.fix),
    }


def to_json(report: BatchReport) -> Dict[str, Any]:
    """The issue's schema: format_version, experiments[], causes{id: count}."""
    return {
        "format_version": FORMAT_VERSION,
        "experiments": [explanation_json(e) for e in report.explanations],
        "causes": dict(report.causes),
        "precision": dict(report.precision),
    }


def masked(obj: Any) -> Any:
    """A copy of a JSON-shaped value with every string masked (core.secrets): nothing explain
    prints or writes shows a secret, whatever the logs and records held."""
    if isinstance(obj, str):
        return mask_text(obj)
    if isinstance(obj, dict):
        return {masked(k): masked(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [masked(v) for v in obj]
    return obj


def dumps(report: BatchReport, indent: Optional[int] = 2) -> str:
    """The JSON report. Evidence, chain, fix and titles were masked when each explanation was made
    (analyze.finish); the folder names are masked here."""
    data = to_json(report)
    for x in data["experiments"]:
        x["experiment_id"], x["path"] = mask_text(x["experiment_id"]), mask_text(x["path"])
    return json.dumps(data, indent=indent, ensure_ascii=False)


# --------------------------------------------------------------------------- shared structure

def by_cause(report: BatchReport) -> "OrderedDict[str, List[Explanation]]":
    groups: Dict[str, List[Explanation]] = {}
    for e in report.explanations:
        if e.cause is not None:
            groups.setdefault(e.cause.id, []).append(e)
    order = sorted(groups, key=lambda k: (min(_rank(x.status) for x in groups[k]), -len(groups[k]), k))
    return OrderedDict((k, groups[k]) for k in order)


def _rank(status: str) -> int:
    return {FAILED: 0, BLOCKED: 1, SUSPICIOUS: 2, SUCCEEDED: 3}.get(status, 4)


def representative(members: Sequence[Explanation]) -> Explanation:
    return max(members, key=lambda e: (e.cause.confidence if e.cause else 0, len(e.evidence)))


def union_fix(members: Sequence[Explanation]) -> Tuple[str, ...]:
    return tuple(dict.fromkeys(f for e in members for f in e.fix))


def ev_text(e: Explanation, n: int = 0) -> str:
    if len(e.evidence) <= n:
        return ""
    v = e.evidence[n]
    return f"{v.location}: {v.text}"


def needs_table(report: BatchReport) -> List[Tuple[str, str, str, str, str, str, int]]:
    """Rows (model, weights, from, cache the run used, present, basis, experiments), one per
    distinct combination, failures first."""
    rows: "OrderedDict[tuple, List[Any]]" = OrderedDict()
    for e in report.explanations:
        for n in e.needs:
            if n.present == "unknown" and n.basis == "not recorded":
                continue  # failed for another reason: says nothing about the weights
            basis = n.basis.split(" (")[0] if n.basis.startswith("inferred from the failure") else n.basis
            key = (n.model, n.need, n.source, n.cache, n.present, basis)
            rows.setdefault(key, [0])[0] += 1
    out = [k + (v[0],) for k, v in rows.items()]
    out.sort(key=lambda r: ({"no": 0, "unknown": 1, "yes": 2}.get(r[4], 3), r[0]))
    return out


def headline(report: BatchReport) -> str:
    n = len(report.explanations)
    parts = [f"{report.count(s)} {s}" for s in (SUCCEEDED, FAILED, BLOCKED, SUSPICIOUS) if report.count(s)]
    return (f"{n} experiment{'s' if n != 1 else ''} in {len(report.runs)} run folder"
            f"{'s' if len(report.runs) != 1 else ''}: " + ", ".join(parts))


def precision_line(report: BatchReport) -> str:
    """How many verdicts rest on logs and how many on experiment.json alone."""
    p = report.precision
    return (f"{p['from_logs']} verdict(s) rest on logs, {p['from_record']} on experiment.json alone "
            "(no log kept: confidence 0.5 or less)")


def _span(report: BatchReport) -> str:
    ts = sorted(e.timestamp for e in report.explanations if e.timestamp)
    if not ts:
        return ""
    return f"{ts[0][:19].replace('T', ' ')} to {ts[-1][:19].replace('T', ' ')}"


# --------------------------------------------------------------------------- rerun settings

def rerun_settings(report: BatchReport, name: str = "") -> Dict[str, Any]:
    """A settings file (the user's format) with just the failed and blocked experiments, each as a
    `default` entry with its recorded hyperparameters (parallel ones keep foreground/background)."""
    entries: List[Dict[str, Any]] = []
    seen = set()
    for e in report.to_rerun:
        note = f"rerun of {e.experiment_id}" + (f" ({e.cause.id})" if e.cause else "")
        fg = {"repo": e.repo, "model": e.model, "mode": "default", "hyperparameters": dict(e.hyperparameters)}
        if e.mode == "parallel" and e.background is not None:
            bg = e.background
            entry = {"mode": "parallel", "foreground": fg,
                     "background": {"repo": bg.get("repository") or bg.get("repo") or "",
                                    "model": bg.get("model") or "",
                                    "hyperparameters": dict(bg.get("hyperparameters") if isinstance(bg.get("hyperparameters"), dict) else {})},
                     "note": note}
        else:
            entry = {"mode": "default", "repo": e.repo, "model": e.model,
                     "hyperparameters": dict(e.hyperparameters), "note": note}
        key = json.dumps([e.experiment_id, entry.get("foreground") or entry.get("hyperparameters"),
                          e.repo, e.model], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        entries.append(entry)
    base = name or os.path.basename(report.root.rstrip("/")) or "results"
    return {
        "experiment_name": f"rerun_{base}",
        "description": (f"{len(entries)} experiment(s) that failed or were held back in {report.root}, "
                        "with their recorded hyperparameters (written by mutation-doctor explain)"),
        "runs_per_config": 1,
        "max_retries": 2,
        "mode": "mixed" if any(x["mode"] == "parallel" for x in entries) else "default",
        "experiments": entries,
    }


def write_rerun(report: BatchReport, path: str) -> int:
    """Write the rerun settings file atomically; returns the number of entries."""
    from core.memo import write_atomic

    data = masked(rerun_settings(report))
    write_atomic(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return len(data["experiments"])


# --------------------------------------------------------------------------- Markdown

def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: BatchReport, rerun_file: Optional[str] = None) -> str:
    """The batch report as Markdown, secrets masked."""
    return mask_text(_markdown(report, rerun_file))


def _markdown(report: BatchReport, rerun_file: Optional[str] = None) -> str:
    L: List[str] = [f"# Failure report: {report.root}", ""]
    _md_runs(report, L)
    groups = by_cause(report)
    if groups:
        L += ["## Causes", "", "| cause | experiments | confidence |", "|---|---:|---|"]
        for cid, members in groups.items():
            confs = sorted({m.cause.confidence for m in members})
            L.append(f"| `{cid}` | {len(members)} | {_conf_range(confs)} |")
        L.append("")
    for cid, members in groups.items():
        _md_cause(cid, members, L)
    _md_succeeded(report, L)
    _md_rerun(report, rerun_file, L)
    L.append("")
    return "\n".join(L)


def _md_runs(report: BatchReport, L: List[str]) -> None:
    span = _span(report)
    L += ["## What ran", "",
          f"{headline(report)}." + (f" Timestamps from {span}." if span else "") + f" {precision_line(report)}.", "",
          "| run folder | experiments | succeeded | failed | blocked | suspicious |", "|---|---:|---:|---:|---:|---:|"]
    for run in report.runs:
        ex = [e for e in report.explanations if e.run == run]
        c = {s: sum(1 for e in ex if e.status == s) for s in (SUCCEEDED, FAILED, BLOCKED, SUSPICIOUS)}
        L.append(f"| {run} | {len(ex)} | {c[SUCCEEDED]} | {c[FAILED]} | {c[BLOCKED]} | {c[SUSPICIOUS]} |")
    L.append("")


def _md_cause(cid: str, members: Sequence[Explanation], L: List[str]) -> None:
    rep = representative(members)
    L += [f"### `{cid}`: {rep.cause.title}", "", "| experiment | status | confidence | decisive evidence |",
          "|---|---|---:|---|"]
    for m in members:
        L.append(f"| {m.experiment_id} | {m.status} | {m.cause.confidence:.2f} | {_md_escape(ev_text(m))} |")
    L += ["", f"**Chain of events** (for {rep.experiment_id}, `{rep.path}`):", ""]
    L.extend(_numbered(rep.chain))
    L.append("")
    if rep.evidence:
        L += ["Evidence:", ""]
        L.extend(f"- `{v.location}`: {_md_escape(v.text)}" for v in rep.evidence)
        L.append("")
    fixes = union_fix(members)
    if fixes:
        L += ["**Fix:**", "", "```sh", *fixes, "```", ""]
    others = [m for m in members if m is not rep and m.chain != rep.chain]
    if others:
        L += ["<details><summary>Chain of events for the other experiments</summary>", ""]
        for m in others:
            L += [f"**{m.experiment_id}** (`{m.path}`)", ""]
            L.extend(_numbered(m.chain))
            L.append("")
        L += ["</details>", ""]


def _md_succeeded(report: BatchReport, L: List[str]) -> None:
    rows = needs_table(report)
    if rows:
        L += ["## Why the others succeeded", "",
              "Pretrained weights per model: where they come from, the cache the run used, and whether "
              "they were there.", "",
              "| model | weights | from | cache the run used | present | how we know | experiments |",
              "|---|---|---|---|---|---|---:|"]
        L.extend("| " + " | ".join(_md_escape(str(x)) for x in r) + " |" for r in rows)
        L.append("")
    noise = [(e, n) for e in report.explanations for n in e.notes if n.startswith("ignored traceback")]
    if noise:
        L += ["## Tracebacks that were not causes", ""]
        L.extend(f"- {e.experiment_id}: {n[len('ignored traceback at '):]} (the run went on to succeed)"
                 for e, n in noise)
        L.append("")


def _md_rerun(report: BatchReport, rerun_file: Optional[str], L: List[str]) -> None:
    L += ["## What to rerun", ""]
    rr = report.to_rerun
    if not rr:
        L.append("Nothing: no experiment failed or was held back.")
    else:
        L += [f"{len(rr)} experiment(s) failed or were held back: " + ", ".join(e.experiment_id for e in rr) + ".", ""]
        if rerun_file:
            L += [f"Settings file with just these, recorded hyperparameters kept: `{rerun_file}`. After the "
                  "fixes above:", "", "```sh", f"mutation-doctor -ec {rerun_file}",
                  f"mutation-run --require-preflight -ec {rerun_file}", "```"]
    sus = [e for e in report.explanations if e.status == SUSPICIOUS]
    if sus:
        L += ["", f"Not included, check by hand: {len(sus)} suspicious run(s) ("
              + ", ".join(e.experiment_id for e in sus) + ")."]


def _numbered(steps: Sequence[str]) -> List[str]:
    return [f"{i}. {step}" for i, step in enumerate(steps, 1)]


def _conf_range(confs: Sequence[float]) -> str:
    if not confs:
        return ""
    return f"{confs[0]:.2f}" if len(confs) == 1 else f"{confs[0]:.2f}–{confs[-1]:.2f}"


# --------------------------------------------------------------------------- terminal

class _MaskedConsole:
    """A console whose printed text is masked (core.secrets) before it is shown."""

    def __init__(self, console):
        self._con = console

    def print(self, *objects, **kw) -> None:
        self._con.print(*(mask_text(o) if isinstance(o, str) else o for o in objects), **kw)


def render_terminal(report: BatchReport, console=None, verbose: bool = False,
                    rerun_file: Optional[str] = None, markdown_file: Optional[str] = None) -> None:
    from rich.markup import escape
    from rich.table import Table

    from doctor.render import report_console

    con = _MaskedConsole(console or report_console())
    con.print(f"[bold]mutation-doctor explain[/bold] {escape(report.root)}")
    groups = by_cause(report)
    for cid, members in groups.items():
        rep = representative(members)
        worst = min((m.status for m in members), key=_rank)
        confs = sorted({m.cause.confidence for m in members})
        con.print()
        con.print(f"[{STYLE[worst]}][{MARK[worst]}][/] [bold]{cid}[/bold]: {escape(rep.cause.title)} "
                  f"({len(members)} experiment{'s' if len(members) != 1 else ''}, confidence {_conf_range(confs)})")
        for m in members[: (None if verbose else 8)]:
            con.print(f"    {MARK[m.status]} {escape(m.experiment_id)}  [dim]{escape(ev_text(m)[:150])}[/dim]")
        if not verbose and len(members) > 8:
            con.print(f"    … and {len(members) - 8} more (-v lists all)")
        shown = members if verbose else [rep]
        for m in shown:
            if verbose:
                con.print(f"    [bold]{escape(m.experiment_id)}[/bold] {escape(m.path)}")
                for v in m.evidence:
                    con.print(f"      [dim]evidence[/dim] {escape(v.location)}: {escape(v.text)}")
            for i, step in enumerate(m.chain, 1):
                con.print(f"      {i}. {escape(step)}")
        fixes = union_fix(members)
        if fixes:
            con.print("    [bold]fix:[/bold]")
            for fx in fixes:
                con.print(f"      [cyan]{escape(fx)}[/cyan]")
    if verbose:
        ok = [e for e in report.explanations if e.status == SUCCEEDED]
        if ok:
            con.print()
            con.print(f"[green][✓][/green] succeeded ({len(ok)})")
            for e in ok:
                con.print(f"    ✓ {escape(e.experiment_id)}  [dim]{escape('; '.join(e.notes))}[/dim]")
    noise = [e for e in report.explanations if any(n.startswith("ignored traceback") for n in e.notes)]
    if noise and not verbose:
        con.print()
        con.print(f"[dim]{len(noise)} run(s) that succeeded have a traceback in their log (not a cause; -v shows "
                  f"them): {escape(', '.join(e.experiment_id for e in noise[:5]))}"
                  f"{' …' if len(noise) > 5 else ''}[/dim]")
    rows = needs_table(report)
    if rows and (groups or verbose):
        t = Table(title="Why the others succeeded: pretrained weights per model", title_justify="left")
        for col in ("model", "weights", "from", "cache the run used", "present", "how we know", "n"):
            t.add_column(col, overflow="fold")
        for r in rows:
            t.add_row(*(escape(mask_text(str(x))) for x in r))
        con.print()
        con.print(t)
    con.print()
    rr = report.to_rerun
    if rr:
        if rerun_file:
            con.print(f"Rerun: {len(rr)} experiment(s) written to [bold]{escape(rerun_file)}[/bold]  "
                      f"(mutation-run --require-preflight -ec {escape(rerun_file)})")
        else:
            con.print(f"Rerun: {len(rr)} experiment(s); write a settings file for them with --rerun FILE "
                      "or --markdown FILE")
    if markdown_file:
        con.print(f"Report written to {escape(markdown_file)}")
    style = "red" if report.exit_code else ("yellow" if report.count(SUSPICIOUS) else "green")
    con.print(f"[dim]{escape(precision_line(report))}[/dim]")
    con.print(f"[{style}]{escape(headline(report))}[/] [dim]({report.elapsed:.2f} s)[/dim]")
