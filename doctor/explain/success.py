"""Successful records checked: a process that really failed, a run that trained nothing, metrics
that were not extracted, a run stopped at its time limit."""
from __future__ import annotations

import statistics
from typing import List, Optional, Tuple

from doctor.explain.model import FAILED, INDIRECT, SUCCEEDED, SUSPICIOUS
from doctor.explain.readers import SUCCESS_BLOCK
from doctor.explain.facts import as_list, as_num, fmt_s
from doctor.explain.logscan import TB_MARK_B, LogScan, suspect_line


SHORT_FACTOR = 0.2  # "far shorter than its siblings": under a fifth of their median ...
SHORT_MIN_GAP = 60.0  # ... and at least a minute shorter (quick demo runs are not suspicious) ...
SECONDS = 30.0  # ... and seconds, not minutes: a run of a minute or more did work


class SuccessCheck:
    """Mixed into the per-experiment analysis (doctor.explain.analyze.ExperimentAnalysis); uses its
    record (`d`, `fg`, `rec`, `launch`, `preflight`), `facts`, `evidence` and chain lists."""

    def success_scans(self) -> List[LogScan]:
        """One log is enough for a success: terminal_output.txt holds the training output and the
        exit code line in the user's layout; otherwise the last attempt's log."""
        names = ["terminal_output.txt", "training.log"] if self.layout == "user" else self.log_names()
        for n in names:
            sc = self.log(n, want_chain=False, first=SUCCESS_BLOCK)
            if sc is not None:
                return [sc]
        return []

    def check_success(self) -> Tuple[str, Optional[Tuple[str, float]]]:
        scans = self.success_scans()
        exit_scan = next((s for s in scans if s.exit_code is not None), None)
        code = self.d.get("exit_code") if isinstance(self.d.get("exit_code"), int) else None
        if exit_scan is not None and code is None:
            code = exit_scan.exit_code
        if code not in (None, 0):
            # Recorded as a success by a regex, but the process failed.
            if exit_scan is not None:
                self.evidence.append(exit_scan.ev(exit_scan.exit_index))
            self.pre_chain.append(f"It was recorded as successful, but the training process exited with code {code}.")
            return FAILED, self.failed_cause()
        limit = self.time_limit_cause(scans, recorded_success=True)
        if limit is not None:
            return FAILED, limit
        has_metrics = isinstance(self.metrics, dict) and any(v is not None for v in self.metrics.values())
        no_patterns = not self.an.knowledge.expects_metrics(self.repo) or any(
            isinstance(w, str) and "no log_patterns" in w for w in as_list(self.d.get("warnings")))
        missing = not has_metrics and not no_patterns and (self.metrics is not None or self.layout == "user")
        if missing:
            self.evidence.append(self.jev("performance_metrics", f'"performance_metrics": {self.metrics!r}'))
        elif has_metrics:
            shown = ", ".join(f"{k} {v}" for k, v in list(self.metrics.items())[:4])
            self.notes.append(f"metrics: {shown}")
        suspicions = self.trained_nothing(scans, has_metrics)
        self.noise_tracebacks(scans, has_metrics)
        self.exit_evidence(exit_scan, code, worth_a_line=bool(suspicions or self.post_chain))
        if suspicions:
            self.facts["suspicion_sentences"] = " ".join(suspicions + (
                ["No metric was found in its output (performance_metrics is empty)."] if missing else []))
            if scans:
                self.facts["log_path"] = scans[0].path
            conf = min(0.9, 0.35 + 0.15 * (len(suspicions) + missing) + (0.15 if scans else 0))
            if not scans:
                conf = min(conf, INDIRECT)
                self.pre_chain.append("No log was kept for this experiment; this is judged from experiment.json.")
            return SUSPICIOUS, ("false-success", round(conf, 2))
        if missing:
            return SUCCEEDED, self.metrics_not_extracted(scans)
        head = "It finished" + (self.facts["exit_sentence"].replace(" (exit code 0, ", " with exit code 0 (")
                                if exit_scan is not None else (" with exit code 0" if code == 0 else ""))
        self.pre_chain.insert(0, head + (f" and reported {self.notes[0][9:]}" if has_metrics else "") + ".")
        return SUCCEEDED, None

    def exit_evidence(self, exit_scan: Optional[LogScan], code: Optional[int], worth_a_line: bool) -> None:
        if exit_scan is not None:
            if worth_a_line:
                ev = exit_scan.ev(exit_scan.exit_index, exit_scan.exit_line)
            else:
                ev = exit_scan.ev(lambda: exit_scan.exit_index, exit_scan.exit_line, count=False)
            self.evidence.insert(0, ev)
            self.facts["exit_sentence"] = f" (exit code {exit_scan.exit_code}, {ev.location})"
        elif code == 0:
            self.facts["exit_sentence"] = " (exit code 0)"

    def noise_tracebacks(self, scans: List[LogScan], has_metrics: bool) -> None:
        """Tracebacks in a run that went on to finish are noise: said so, not a cause."""
        for s in scans:
            if s.chain is not None:
                fat = s.chain.fatal
                where = s.where(fat.index)
                n_tb = s.tail.data.count(TB_MARK_B)
                self.notes.append(f"ignored traceback at {where}: {fat.line_text}")
                self.evidence.append(s.ev(fat.index, fat.line_text))
                self.post_chain.append(
                    f"A traceback at {where} ({fat.line_text}) "
                    + (f"and {n_tb - 1} more " if n_tb > 1 else "")
                    + "came from a step that did not stop the run, which went on to finish"
                    + (" and report its metrics" if has_metrics else "") + "; it is noise, not a cause.")
                return

    # ----------------------------------------------------------------- trained nothing?

    def gpu_work(self) -> bool:
        """The record shows the GPU working for this run (not a parallel run, whose background job
        also uses the GPU): 10 % average utilisation or more, or 1 kJ of GPU energy."""
        if self.parallel:
            return False
        util = as_num(self.energy.get("gpu_util_avg_percent"))
        joules = as_num(self.energy.get("gpu_energy_total_joules"))
        return (util is not None and util >= 10) or (joules is not None and joules >= 1000)

    def _too_fast(self, has_metrics: bool) -> List[str]:
        """Seconds where the same model's other runs took minutes; under a second per epoch; no GPU
        use at all in a run of seconds."""
        out: List[str] = []
        sibs = [d for p, d in self.run.ok_durations(self.repo, self.model, self.parallel) if p != self.folder]
        if self.duration is not None and len(sibs) >= 2:
            med = statistics.median(sibs)
            if self.duration < SECONDS and self.duration < SHORT_FACTOR * med and med - self.duration >= SHORT_MIN_GAP:
                self.evidence.append(self.jev("duration_seconds", f'"duration_seconds": {self.duration:.1f}'))
                out.append(f"It ran {fmt_s(self.duration)}; the median of the {len(sibs)} other successful "
                           f"{self.model} runs in this batch is {fmt_s(med)}.")
        epochs = as_num((self.fg.get("hyperparameters") or {}).get("epochs"))
        ref = self.an.reference.get((self.repo, self.model), ())
        as_fast = any(r <= 2 * self.duration for r in ref) if self.duration is not None else True
        if (self.duration is not None and epochs and epochs >= 2 and self.duration < epochs * 1.0
                and not has_metrics and not as_fast):
            out.append(f"{fmt_s(self.duration)} for {int(epochs)} epochs is less than a second per epoch"
                       + (f"; runs of {self.model} that reported metrics took {fmt_s(ref[0])} or more." if ref
                          else ", and no run of this model in the batch reported metrics."))
        umax = as_num(self.energy.get("gpu_util_max_percent"))
        if (not has_metrics and not self.parallel and umax == 0 and self.duration is not None
                and self.duration < SHORT_MIN_GAP):
            self.evidence.append(self.jev("gpu_util_max_percent", '"gpu_util_max_percent": 0'))
            out.append(f"The GPU was never used (gpu_util_max_percent 0) in a run of {fmt_s(self.duration)}.")
        return out

    def trained_nothing(self, scans: List[LogScan], has_metrics: bool) -> List[str]:
        """Positive evidence that a successful run did no training: a log line that says so, a
        duration of seconds where the same model's other runs took minutes, under a second per
        epoch, or no GPU use at all in a run of seconds. An empty performance_metrics alone is
        not evidence (the registry's pattern may simply not match)."""
        out: List[str] = []
        if not self.gpu_work():  # minutes-long GPU use is work, however short next to other runs
            out += self._too_fast(has_metrics)
        for s in scans:
            i = suspect_line(s)
            if i is not None:
                self.evidence.append(s.ev(i))
                out.append(f"Its log says \"{s.tail.line(i).strip()[:120]}\" ({s.name}:{s.tail.line_number(i)}).")
                break
        return out
