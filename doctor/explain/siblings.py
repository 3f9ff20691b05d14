"""The other experiments of a run folder, as evidence by comparison."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

from doctor.explain.readers import JsonRecord, read_small_text
from doctor.explain.facts import as_num

@dataclass
class Sibling:
    """What the run's other experiments say, for evidence by comparison."""

    repo: str
    model: str
    parallel: bool
    ok: Optional[bool]
    duration: Optional[float]
    power_min: Optional[float]
    path: str
    metrics: bool = False


@dataclass
class RunContext:
    folder: str
    siblings: List[Sibling] = field(default_factory=list)
    _summary: Optional[str] = None
    _summary_read: bool = False
    _ok: Optional[Dict[Tuple[str, str, bool], List[Tuple[str, float]]]] = None

    def ok_durations(self, repo: str, model: str, parallel: bool) -> List[Tuple[str, float]]:
        """(path, duration) of the successful siblings of one kind (computed once per run)."""
        if self._ok is None:
            self._ok = {}
            for s in self.siblings:
                if s.ok and s.duration:
                    self._ok.setdefault((s.repo, s.model, s.parallel), []).append((s.path, s.duration))
        return self._ok.get((repo, model, parallel), [])

    def summary_line(self, experiment_id: str) -> Tuple[Optional[int], str]:
        if not self._summary_read:
            self._summary_read = True
            self._summary = read_small_text(os.path.join(self.folder, "summary.csv"))
        if not self._summary:
            return None, ""
        for i, ln in enumerate(self._summary.splitlines()):
            if ln.startswith(experiment_id + ","):
                return i + 1, ln
        return None, ""



# --------------------------------------------------------------------------- batches

def sibling(folder: str, rec: JsonRecord) -> Sibling:
    d = rec.data or {}
    par = isinstance(d.get("foreground"), dict)
    fg = d["foreground"] if par else d
    ok: Optional[bool]
    st = d.get("status")
    if st in ("passed", "failed", "interrupted", "blocked"):
        ok = st == "passed" if st != "blocked" else None
    else:
        ts = fg.get("training_success")
        ok = bool(ts) if ts is not None else None
    en = fg.get("energy_metrics") if isinstance(fg.get("energy_metrics"), dict) else {}
    pm = fg.get("performance_metrics")
    metrics = isinstance(pm, dict) and any(v is not None for v in pm.values())
    return Sibling(str(fg.get("repository") or fg.get("repo") or ""), str(fg.get("model") or ""), par, ok,
                   as_num(fg.get("duration_seconds")), as_num(en.get("gpu_power_min_watts")), folder, metrics)


def model_reference(sibs: Iterable[Sibling]) -> Dict[Tuple[str, str], Tuple[float, ...]]:
    """(repo, model) -> sorted durations of that model's successful runs that reported metrics,
    over the whole batch: what a real run of the model takes."""
    out: Dict[Tuple[str, str], List[float]] = {}
    for s in sibs:
        if s.ok and s.metrics and s.duration:
            out.setdefault((s.repo, s.model), []).append(s.duration)
    return {k: tuple(sorted(v)) for k, v in out.items()}


def run_members(run_folder: str) -> List[str]:
    try:
        with os.scandir(run_folder) as it:
            subs = [e.path for e in it if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []
    return sorted(p for p in subs if os.path.isfile(os.path.join(p, "experiment.json")))[:5000]


