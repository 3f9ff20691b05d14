"""Metrics the registry's log_patterns did not extract: the log lines that look like each metric,
and a pattern that would have matched them.

A line looks like metric `rank1` when, lower-cased and stripped of everything but letters and
digits, it contains the metric's name stripped the same way ("Rank@1: 0.88" -> "rank1088"), and it
holds a number. Only the last lines of the log are looked at (a report is printed at the end).
"""
from __future__ import annotations

import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from doctor.explain.facts import as_num, fmt_s
from doctor.explain.logscan import last_lines
from doctor.explain.model import INDIRECT

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_ALNUM = re.compile(r"[^a-z0-9]+")
MAX_LINE = 400  # longer lines are progress-bar debris, not a report


def _norm(text: str) -> str:
    return _ALNUM.sub("", text.lower())


def _name_rx(name: str) -> Optional["re.Pattern[str]"]:
    """The metric's name as it may be printed: its letters and digits in order, anything but a
    letter or digit between them, not inside a longer word or number ("rank1" finds "Rank@1"
    and "rank_1", not "Rank@10")."""
    key = _norm(name)
    if not key:
        return None
    return re.compile(r"(?<![a-z0-9])" + r"[^a-z0-9\n]{0,3}".join(map(re.escape, key)) + r"(?![a-z0-9])")


def lookalikes(lines: Sequence[Tuple[int, str]], names: Sequence[str], limit: int = 3) -> Dict[str, List[Tuple[int, str]]]:
    """For each metric name, up to `limit` (index, line) pairs that look like it, last ones first."""
    rxs = {n: rx for n, rx in ((n, _name_rx(n)) for n in names) if rx is not None}
    out: Dict[str, List[Tuple[int, str]]] = {}
    for i, line in lines:
        if len(line) > MAX_LINE or not _NUMBER.search(line):
            continue
        low = line.lower()
        for name, rx in rxs.items():
            got = out.setdefault(name, [])
            if len(got) < limit and rx.search(low):
                got.append((i, line.strip()))
    return {k: v for k, v in out.items() if v}


def label_of(line: str, name: str) -> str:
    """The text from the metric's name up to its number in `line` ("Rank@1:"), or ""."""
    rx = _name_rx(name)
    low = line.lower()
    m = rx.search(low) if rx and len(low) == len(line) else None
    num = _NUMBER.search(line, m.end()) if m else None
    return line[m.start():num.start()].strip() if num else ""


def suggest_pattern(line: str, name: str) -> Optional[str]:
    """A regex with one group that captures the number following the metric's label in `line`."""
    words = [re.escape(w) for w in label_of(line, name).split()]
    return r"\s*".join(words) + r"\s*([-+]?[0-9.]+(?:[eE][-+]?\d+)?)" if words else None


def pattern_checks(patterns: Mapping[str, str], lines: Sequence[str]) -> Dict[str, bool]:
    """Whether each (valid) pattern matches any of `lines`; invalid patterns are left out."""
    text = "\n".join(lines)
    out: Dict[str, bool] = {}
    for name, rx in patterns.items():
        try:
            out[name] = re.search(rx, text) is not None
        except (re.error, RecursionError, OverflowError):
            continue
    return out


class MetricsCheck:
    """Mixed into the per-experiment analysis (doctor.explain.analyze.ExperimentAnalysis): a
    successful run with no metrics and no evidence that it trained nothing."""

    def work_sentence(self) -> Tuple[str, bool]:
        """What the record says the run did, and whether that is real work (minutes, GPU use, energy)."""
        e, parts, real = self.energy, [], False
        if self.duration is not None:
            parts.append(f"it ran {fmt_s(self.duration)}")
            real = real or self.duration >= 60
        util = as_num(e.get("gpu_util_avg_percent"))
        if util is not None:
            parts.append(f"the GPU was {util:.1f} % busy on average")
            real = real or (util >= 10 and not self.parallel)
        for key, label in (("cpu_energy_total_joules", "CPU"), ("gpu_energy_total_joules", "GPU")):
            j = as_num(e.get(key))
            if j is not None:
                parts.append(f"{j / 1000:.1f} kJ {label} energy")
                real = real or (label == "GPU" and j >= 1000 and not self.parallel)
        for key in ("duration_seconds", "gpu_util_avg_percent", "gpu_energy_total_joules"):
            v = self.fg.get(key, e.get(key))
            if v is not None:
                self.evidence.append(self.jev(key, f'"{key}": {v}'))
        return ", ".join(parts), real

    def metrics_not_extracted(self, scans) -> Tuple[str, float]:
        f = self.facts
        f["repo"] = self.repo or "this repo"
        f["exit_sentence"] = f.get("exit_sentence") or " (by mutation.py's success patterns; no exit code was kept)"
        work, real = self.work_sentence()
        f["work_sentence"] = (work if real else (work + "; " if work else "") +
                              "nothing in its record says it trained nothing")
        patterns = self.an.knowledge.log_patterns(self.repo)
        bad = self.an.knowledge.invalid_patterns(self.repo)
        if bad:
            f["pattern_sentence"] = ("the registry's log_patterns cannot work: " +
                                     "; ".join(f"{k}: {v}" for k, v in sorted(bad.items())) + ".")
        elif patterns:
            shown = ", ".join(f"{k} {v!r}" for k, v in sorted(patterns.items())[:4])
            f["pattern_sentence"] = (f"the registry's log_patterns for {f['repo']} ({shown}) matched nothing"
                                     + (" in the log." if scans else "; no log was kept to show what it printed."))
        else:
            f["pattern_sentence"] = "no log_patterns of this repo are known here (give the registry with --models-config)."
        conf = 0.8 if scans else (INDIRECT if real else 0.35)
        if scans:
            conf = self._lookalike_facts(scans[0], patterns, conf)
        else:
            self.pre_chain.append("No log was kept for this experiment; this is judged from experiment.json.")
        return "metrics.not-extracted", conf

    def _lookalike_facts(self, scan, patterns: Mapping[str, str], conf: float) -> float:
        f = self.facts
        f["log_path"] = scan.path
        names = sorted(patterns)
        found = lookalikes(last_lines(scan, 200), names)
        if not found:
            return conf
        said, fixes = [], []
        for name, hits in sorted(found.items()):
            i, line = hits[0]
            self.evidence.append(scan.ev(i))
            said.append(f"{name}: \"{line[:120]}\" ({scan.name}:{scan.tail.line_number(i)})")
            rx = suggest_pattern(line, name)
            if rx:
                fixes.append(f"\"{name}\": \"{rx}\"")
        f["lookalike_sentence"] = "The log holds lines that look like the metrics: " + "; ".join(said) + "."
        labels = {label_of(hits[0][1], name) for name, hits in found.items()} - {""}
        f["lookalike_regex"] = "|".join(sorted(re.escape(x).replace("'", ".") for x in labels))
        if fixes:
            f["pattern_fix"] = ", ".join(fixes).replace("\\", "\\\\")
        return min(0.9, conf + 0.05)
