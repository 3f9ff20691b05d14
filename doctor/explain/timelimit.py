"""Runs stopped at their time limit, as mutation.py records them.

mutation.py kills a run at its timeout (FAST_TRAINING_TIMEOUT_SECONDS = 3600, or the plan's own
`timeout`) and starts terminal_output.txt with "TIMEOUT - PARTIAL OUTPUT"; since success is a regex
over the log, an evaluation line printed before the kill can make such a run "successful". A run is
a timeout when terminal_output.txt starts with that marker, or when its recorded duration sits at a
round limit and its log ends mid-progress (no final report, no fatal exception).
"""
from __future__ import annotations

import re
from typing import List, Optional, Set, Tuple

from doctor.explain.facts import as_num, fmt_s
from doctor.explain.logscan import LogScan, last_lines, read_head
from doctor.explain.model import INDIRECT, Evidence

TIMEOUT_MARK = b"TIMEOUT - PARTIAL OUTPUT"
FAST_TRAINING_TIMEOUT_SECONDS = 3600
ROUND_LIMITS = frozenset(float(FAST_TRAINING_TIMEOUT_SECONDS * k) for k in range(1, 25))  # whole hours
LIMIT_SLACK = 30.0  # seconds between the limit and the end of the kill as recorded
# Slurm job states (sacct) of a job its scheduler stopped for time, and what stopped it.
SLURM_TIME_STATES = {"TIMEOUT": "time limit", "DEADLINE": "deadline"}
# What a run prints when it ends by itself: a final report, a success banner, an exit code line.
_FINAL = re.compile(r"Training completed|completed successfully|\[SUCCESS\]|Evaluation completed|"
                    r"exit code|Finished|\bDone\b|Total time|Final (?:results|test|accuracy)|Best ", re.I)


class TimeLimit:
    """Mixed into the per-experiment analysis (doctor.explain.analyze.ExperimentAnalysis)."""

    def time_limits(self) -> Set[float]:
        """Their runner's round limits (whole hours up to a day) and any timeout in the record."""
        limits = set(ROUND_LIMITS)
        for src in (self.d, self.fg):
            for key in ("timeout", "timeout_seconds", "training_timeout"):
                v = as_num(src.get(key))
                if v and v > 0:
                    limits.add(v)
        return limits

    def _recorded_timeout(self) -> bool:
        return any(k in src for src in (self.d, self.fg) for k in ("timeout", "timeout_seconds", "training_timeout"))

    def at_limit(self) -> Optional[float]:
        d = self.duration
        if d is None or d < FAST_TRAINING_TIMEOUT_SECONDS - 1 and not self._recorded_timeout():
            return None
        return next((lim for lim in sorted(self.time_limits()) if lim - 1.0 <= d <= lim + LIMIT_SLACK), None)

    def time_limit_cause(self, scans: List[LogScan], recorded_success: bool) -> Optional[Tuple[str, float]]:
        """("timeout", confidence) when the run was stopped at its time limit, else None."""
        lim = self.at_limit()
        # The marker stands where the wrapper's own end ("exit code N") is missing: read it only then.
        ended = any(s.exit_code is not None for s in scans)
        head = b"" if ended else read_head(self.folder, "terminal_output.txt", len(TIMEOUT_MARK))
        if head == TIMEOUT_MARK:
            self.evidence.append(Evidence("terminal_output.txt", 1, TIMEOUT_MARK.decode()))
            conf = 0.9
        elif lim is not None and scans and _mid_progress(scans[0]):
            conf = 0.8
        else:
            return None
        f = self.facts
        f["duration_text"] = fmt_s(self.duration) if self.duration is not None else "its time limit"
        f["signal_text"] = "the runner's kill at " + (fmt_s(lim) if lim else "its time limit")
        f["bigger_timeout"] = str(int(max(lim or 0, self.duration or 0, 60) * 2))
        if self.duration is not None:
            self.evidence.append(self.jev("duration_seconds", f'"duration_seconds": {self.duration:.1f}'))
        if recorded_success:
            self.pre_chain.append("It was recorded as successful because a line earlier in the log matched the "
                                  "success pattern, but the run did not finish.")
        self._last_line_fact(scans)
        return "timeout", conf

    def record_only_time_limit(self) -> Optional[Tuple[str, float]]:
        """A failure with no log whose duration sits at a round limit: a timeout, by inference."""
        lim = self.at_limit()
        if lim is None:
            return None
        self.facts["duration_text"] = fmt_s(self.duration)
        self.facts["signal_text"] = f"the runner's kill at {fmt_s(lim)} (inferred from the duration)"
        self.facts["bigger_timeout"] = str(int(lim * 2))
        return "timeout", INDIRECT - 0.1


    def slurm_time_limit(self) -> Optional[Tuple[str, float]]:
        """("timeout", confidence) when Slurm's accounting, as the Slurm backend records it under
        `slurm.state`, says the job was ended at its time limit (TIMEOUT) or its deadline (DEADLINE)."""
        slurm = self.d.get("slurm")
        state = slurm.get("state") if isinstance(slurm, dict) else None
        if state not in SLURM_TIME_STATES:
            return None
        job = slurm.get("job_id")
        self.evidence.append(self.jev("slurm", f'"slurm": state {state}' + (f", job {job}" if job else "")))
        dur = self.duration
        f = self.facts
        f["duration_text"] = fmt_s(dur) if dur is not None else "its time limit"
        f["signal_text"] = f"Slurm's kill at the job's {SLURM_TIME_STATES[state]} (sacct state {state})"
        f["bigger_timeout"] = str(max(60, int(round((dur or 3600) * 2))))
        self.pre_chain.append(f"Slurm ended the job{' ' + str(job) if job else ''} at its {SLURM_TIME_STATES[state]}; "
                              "a longer run needs a longer sbatch --time as well.")
        return "timeout", 0.95


def _mid_progress(scan: LogScan) -> bool:
    """The log ends without a final report and without a fatal exception at its end."""
    tail = last_lines(scan, 5)
    if not tail:
        return False
    if scan.chain is not None and scan.chain.fatal.index >= tail[-1][0]:
        return False
    return not any(_FINAL.search(ln) for _, ln in tail)
