"""The results folder: experiment.json per experiment, summary.csv, run.json and the journal.

Layout (compatible with mutation.py's, plus what makes it truthful and crash-safe)::

    results/run_YYYYmmdd_HHMMSS/
        run.json            the expanded plan with its exact values, seed and options (for --resume)
        journal.jsonl       append-only, one fsync'ed JSON line per event
        summary.csv         mutation.py's columns + status
        <experiment_id>/experiment.json, training.log, training.attemptN.log, background.log

Every file but the journal is written atomically (temporary file + rename). Given a
core.safefs.SafeTree (the runner under sudo always gives one), every write goes through it: no
link is followed, nothing is appended to that this run did not create (a --resume starts a new
journal segment, journal.2.jsonl, ...), and what is created is given back to the user.
Reads refuse FIFOs and devices and are bounded.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from core.memo import write_atomic
from core.safefs import SafeTree, open_regular, read_regular
from core.secrets import mask_data
from core.vocab import FORMAT_VERSION
from runner.execute import now_iso

STATUSES = ("passed", "failed", "blocked", "interrupted")
FIXED_COLUMNS = ("experiment_id", "timestamp", "repository", "model", "training_success", "duration_seconds", "retries")
# mutation.py's energy columns, in its order, and the experiment.json keys they come from
ENERGY_COLUMNS = (
    ("energy_cpu_pkg_joules", "cpu_energy_pkg_joules"),
    ("energy_cpu_ram_joules", "cpu_energy_ram_joules"),
    ("energy_cpu_total_joules", "cpu_energy_total_joules"),
    ("energy_gpu_avg_watts", "gpu_power_avg_watts"),
    ("energy_gpu_max_watts", "gpu_power_max_watts"),
    ("energy_gpu_min_watts", "gpu_power_min_watts"),
    ("energy_gpu_total_joules", "gpu_energy_total_joules"),
    ("energy_gpu_temp_avg_celsius", "gpu_temp_avg_celsius"),
    ("energy_gpu_temp_max_celsius", "gpu_temp_max_celsius"),
    ("energy_gpu_util_avg_percent", "gpu_util_avg_percent"),
    ("energy_gpu_util_max_percent", "gpu_util_max_percent"),
)


JSON_LIMIT = 64 * 1024 * 1024  # an experiment.json or run.json larger than this is not one of ours
JOURNAL_SEGMENTS = 1000


def _put(path: str, data: bytes, tree: Optional[SafeTree], durable: bool = True) -> bool:
    if tree is None:
        write_atomic(path, data, durable=durable)
        return True
    return tree.replace(os.path.relpath(path, tree.root), data, durable=durable)


def write_json(path: str, obj: Any, tree: Optional[SafeTree] = None) -> bool:
    """Write `obj` atomically (through `tree` when given); False when the tree refused."""
    return _put(path, (json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8"), tree)


def read_json(path: str) -> Optional[Any]:
    """The JSON in a regular file of at most JSON_LIMIT bytes, else None (never blocks on a FIFO)."""
    try:
        data = read_regular(path, JSON_LIMIT + 1)
        if len(data) > JSON_LIMIT:
            return None
        return json.loads(data.decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def journal_segments(path: str) -> List[str]:
    """`path` and the segments later runs added (journal.2.jsonl, ...), in order."""
    folder, name = os.path.split(path)
    stem, ext = os.path.splitext(name)
    pat = re.compile(re.escape(stem) + r"\.([0-9]{1,4})" + re.escape(ext) + "$")
    try:
        names = os.listdir(folder or ".")
    except OSError:
        names = []
    segs = sorted((int(m.group(1)), n) for n in names for m in [pat.match(n)] if m)
    return [path] + [os.path.join(folder, n) for _, n in segs]


class Journal:
    """Append-only event log; each line is flushed and fsync'ed before the call returns, so after
    a `kill -9` (or a power cut) it says exactly which experiments finished.

    The file is always one this process creates (O_EXCL, no link followed): when `path` exists (a
    --resume), the next free segment `journal.N.jsonl` is started instead; `Journal.read` reads
    them all in order."""

    def __init__(self, path: str, tree: Optional[SafeTree] = None):
        self.tree = tree if tree is not None else SafeTree(os.path.dirname(os.path.abspath(path)))
        stem, ext = os.path.splitext(os.path.relpath(os.path.abspath(path), self.tree.root))
        self._f = None
        for n in range(1, JOURNAL_SEGMENTS + 1):
            rel = f"{stem}{ext}" if n == 1 else f"{stem}.{n}{ext}"
            self._f = self.tree.open_new(rel, quiet=True, sync_dir=True)
            if self._f is not None:
                self.path = os.path.join(self.tree.root, rel)
                break
            if self.tree.refused:
                break
        if self._f is None:
            raise OSError(f"cannot start a journal next to {path}: "
                          + (self.tree.refused[-1].line() if self.tree.refused else "too many segments"))

    def write(self, event: str, **data: Any) -> None:
        line = json.dumps({"event": event, "at": now_iso(), **mask_data(data)}, ensure_ascii=False, default=str)
        self._f.write((line + "\n").encode("utf-8"))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    @staticmethod
    def read(path: str) -> List[dict]:
        """Every complete event of the journal and its segments (a line cut short by a crash is
        skipped; FIFOs and devices are not read)."""
        out = []
        for seg in journal_segments(path):
            try:
                with open_regular(seg) as f:
                    for raw in f:
                        ev = _event(raw)
                        if ev is not None:
                            out.append(ev)
            except OSError:
                continue
        return out


def _event(raw: bytes) -> Optional[dict]:
    line = raw.decode("utf-8", errors="replace").strip()
    if not line:
        return None
    try:
        ev = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return ev if isinstance(ev, dict) and "event" in ev else None


def journal_state(events: Iterable[Mapping[str, Any]]) -> Dict[str, dict]:
    """Per experiment id: its last status (None when it never ended), attempts recorded so far,
    and whether an attempt was started but never ended (the runner died under it)."""
    state: Dict[str, dict] = {}
    for ev in events:
        eid = ev.get("experiment_id")
        if not isinstance(eid, str) or not eid:
            continue  # a journal edited by hand or cut by a crash: what cannot be read is skipped
        s = state.setdefault(eid, {"status": None, "attempts": [], "open_attempt": None})
        kind = ev["event"]
        if kind == "experiment-start":
            s["status"] = None
        elif kind == "attempt-start":
            s["open_attempt"] = {k: ev.get(k) for k in ("attempt", "log", "started")}
        elif kind == "attempt-end" and isinstance(ev.get("record"), dict):
            s["attempts"] = [a for a in s["attempts"] if a.get("attempt") != ev["record"].get("attempt")]
            s["attempts"].append(ev["record"])
            s["open_attempt"] = None
        elif kind == "attempt-log-moved":
            for a in s["attempts"]:
                if a.get("attempt") == ev.get("attempt"):
                    a["log"] = ev.get("log")
        elif kind == "experiment-end":
            s["status"] = ev.get("status") if ev.get("status") in STATUSES else None
            s["open_attempt"] = None
    return state


# -- summary.csv ----------------------------------------------------------------------------------
def _user_part(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """The keys mutation.py's summary reads: top level, or `foreground` for a parallel experiment."""
    fg = record.get("foreground")
    return fg if isinstance(fg, dict) and "repository" in fg else record


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def _names(records: Sequence[Mapping[str, Any]]) -> Tuple[List[str], List[str]]:
    """The hyperparameter and metric names over all records, sorted (the variable columns)."""
    hp_names, perf_names = set(), set()
    for r in records:
        u = _user_part(r)
        hp_names |= set((u.get("hyperparameters") or {}).keys())
        perf_names |= set((u.get("performance_metrics") or {}).keys())
    return sorted(hp_names), sorted(perf_names)


def summary_rows(records: Sequence[Mapping[str, Any]]) -> List[Dict[str, str]]:
    hp_names, perf_names = _names(records)
    rows = []
    for r in records:
        u = _user_part(r)
        row = {"experiment_id": r.get("experiment_id", ""), "timestamp": r.get("timestamp", ""),
               "repository": u.get("repository", ""), "model": u.get("model", ""),
               "training_success": _cell(bool(u.get("training_success"))),
               "duration_seconds": _cell(u.get("duration_seconds")), "retries": _cell(u.get("retries", 0))}
        hp = u.get("hyperparameters") or {}
        for n in hp_names:
            row[f"hyperparam_{n}"] = _cell(hp.get(n))
        perf = u.get("performance_metrics") or {}
        for n in perf_names:
            row[f"perf_{n}"] = _cell(perf.get(n))
        energy = u.get("energy_metrics") or {}
        for col, key in ENERGY_COLUMNS:
            row[col] = _cell(energy.get(key))
        row["status"] = r.get("status", "")
        rows.append(row)
    return rows


def summary_columns(records: Sequence[Mapping[str, Any]]) -> List[str]:
    hp_names, perf_names = _names(records)
    return (list(FIXED_COLUMNS) + [f"hyperparam_{n}" for n in hp_names]
            + [f"perf_{n}" for n in perf_names] + [c for c, _ in ENERGY_COLUMNS] + ["status"])


def write_summary(path: str, records: Sequence[Mapping[str, Any]], tree: Optional[SafeTree] = None) -> bool:
    """summary.csv with mutation.py's columns (hyperparam_*, perf_* sorted; energy_* fixed) + status."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=summary_columns(records), lineterminator="\n")
    w.writeheader()
    for row in summary_rows(records):
        w.writerow(row)
    return _put(path, buf.getvalue().encode("utf-8"), tree, durable=False)


# -- experiment.json -------------------------------------------------------------------------------
def experiment_record(*, job, status: str, timestamp: str, duration: float, exit_code: Optional[int],
                      attempts: Sequence[Mapping[str, Any]], metrics: Mapping[str, float], error_message: str,
                      error_excerpt: Sequence[str], preflight: Mapping[str, Any], launch: Mapping[str, Any],
                      warnings: Sequence[str] = (), background: Optional[Mapping[str, Any]] = None,
                      extra: Optional[Mapping[str, Any]] = None, energy: Optional[Mapping[str, float]] = None) -> dict:
    """One experiment.json: the user's keys (nested under `foreground` for a parallel experiment),
    then ours."""
    user = {"repository": job.foreground.repo, "model": job.foreground.model,
            "hyperparameters": dict(job.foreground.hyperparameters), "duration_seconds": round(duration, 3),
            "energy_metrics": dict(energy or {}), "performance_metrics": dict(metrics), "training_success": status == "passed",
            "retries": max(0, len([a for a in attempts if not a.get("interrupted")]) - 1),
            "error_message": error_message}
    rec: Dict[str, Any] = {"experiment_id": job.id, "timestamp": timestamp}
    if job.background is not None:
        rec["mode"] = "parallel"
        rec["foreground"] = user
        bg = {"repository": job.background.repo, "model": job.background.model,
              "hyperparameters": dict(job.background.hyperparameters), "log": "background.log",
              "note": "Background training served as GPU load only (not monitored)"}
        bg.update(background or {})
        rec["background"] = bg
    else:
        rec.update(user)
        rec["mode"] = job.experiment.mode
    rec.update({"status": status, "exit_code": exit_code, "attempts": [dict(a) for a in attempts],
                "error_excerpt": list(error_excerpt), "warnings": list(warnings),
                "preflight": dict(preflight), "launch": dict(launch), "format_version": FORMAT_VERSION})
    if extra:
        rec.update(extra)
    return rec
