"""Successful records checked: a process that really failed, a run that trained nothing, metrics
that were not extracted, a run stopped at its time limit."""
from __future__ import annotations

import statistics
from typing import List, Optional, Tuple

from doctor.explain.model import FAILED, INDIRECT, SUCCEEDED, SUSPICIOUS, Evidence
from doctor.explain.readers import SUCCESS_BLOCK
from doctor.explain.facts import as_list, as_num, fmt_s
from doctor.explain.logscan import TB_MARK_B, suspect_line


SHORT_FACTOR = 0.2  # "far shorter than its siblings": under a fifth of their median ...
SHORT_MIN_GAP = 60.0  # ... and at least a minute shorter (quick demo runs are not suspicious)


class SuccessCheck:
    """Mixed into the per-experiment analysis (doctor.explain.analyze.ExperimentAnalysis); uses its
    record (`d`, `fg`, `rec`, `launch`, `preflight`), `facts`, `evidence` and chain lists."""

    # ----------------------------------------------------------------- success / suspicious

    def check_success(self) -> Tuple[str, Optional[Tuple[str, float]]]:
        # One log is enough for a success: terminal_output.txt holds the training output and the
        # exit code line in the user's layout; otherwise the last attempt's log.
        names = self.log_names()
        if self.layout == "user":
            names = ["terminal_output.txt", "training.log"]
        scans = []
        for n in names:
            sc = self.log(n, want_chain=False, first=SUCCESS_BLOCK)
            if sc is not None:
                scans.append(sc)
                break
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
        exit_ev = (exit_scan.ev(lambda: exit_scan.exit_index, exit_scan.exit_line, count=False)
                   if exit_scan is not None else None)
        suspicions: List[str] = []
        has_metrics = isinstance(self.metrics, dict) and any(v is not None for v in self.metrics.values())
        no_patterns = not self.an.knowledge.expects_metrics(self.repo) or any(
            isinstance(w, str) and "no log_patterns" in w for w in as_list(self.d.get("warnings")))
        if not has_metrics and not no_patterns and (self.metrics is not None or self.layout == "user"):
            self.evidence.append(self.jev("performance_metrics", f'"performance_metrics": {self.metrics!r}'))
            suspicions.append("No metric was found in its output (performance_metrics is empty).")
            for w in as_list(self.d.get("warnings")):
                if isinstance(w, str) and "trained nothing" in w:
                    self.evidence.append(Evidence("experiment.json", self.rec.line_of('"warnings"'), "warning: " + w))
        elif has_metrics:
            shown = ", ".join(f"{k} {v}" for k, v in list(self.metrics.items())[:4])
            self.notes.append(f"metrics: {shown}")
        sibs = [d for p, d in self.run.ok_durations(self.repo, self.model, self.parallel) if p != self.folder]
        if self.duration is not None and len(sibs) >= 2:
            med = statistics.median(sibs)
            if self.duration < SHORT_FACTOR * med and med - self.duration >= SHORT_MIN_GAP:
                self.evidence.append(self.jev("duration_seconds", f'"duration_seconds": {self.duration:.1f}'))
                suspicions.append(f"It ran {fmt_s(self.duration)}; the median of the {len(sibs)} other successful "
                                  f"{self.model} runs in this batch is {fmt_s(med)}.")
        epochs = as_num((self.fg.get("hyperparameters") or {}).get("epochs"))
        if self.duration is not None and epochs and epochs >= 2 and self.duration < epochs * 1.0 and not has_metrics:
            suspicions.append(f"{fmt_s(self.duration)} for {int(epochs)} epochs is less than a second per epoch.")
        for s in scans:
            i = suspect_line(s)
            if i is not None:
                self.evidence.append(s.ev(i))
                suspicions.append(f"Its log says \"{s.tail.line(i).strip()[:120]}\" ({s.name}:{s.tail.line_number(i)}).")
                break
        # Tracebacks in a run that went on to finish are noise.
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
                break
        if exit_scan is not None:
            if suspicions or self.post_chain:  # worth a line number
                exit_ev = exit_scan.ev(exit_scan.exit_index, exit_scan.exit_line)
            self.evidence.insert(0, exit_ev)
            self.facts["exit_sentence"] = f" (exit code {exit_scan.exit_code}, {exit_ev.location})"
        elif code == 0:
            self.facts["exit_sentence"] = " (exit code 0)"
        if suspicions:
            self.facts["suspicion_sentences"] = " ".join(suspicions)
            if scans:
                self.facts["log_path"] = scans[0].path
            with_log = bool(scans)
            conf = min(0.9, 0.35 + 0.15 * len(suspicions) + (0.15 if with_log else 0))
            if not with_log:
                conf = min(conf, INDIRECT)
                self.pre_chain.append("No log was kept for this experiment; this is judged from experiment.json.")
            return SUSPICIOUS, ("false-success", round(conf, 2))
        head = "It finished" + (self.facts["exit_sentence"].replace(" (exit code 0, ", " with exit code 0 (")
                                if exit_scan is not None else (" with exit code 0" if code == 0 else ""))
        self.pre_chain.insert(0, head + (f" and reported {self.notes[0][9:]}" if has_metrics else "") + ".")
        return SUCCEEDED, None

