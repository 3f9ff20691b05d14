"""Causes of a failed experiment that kept no log, inferred from experiment.json and its siblings
(confidence 0.5 or less)."""
from __future__ import annotations

import os
import re
from typing import Optional, Tuple

from core.failures import catalogue as cat
from doctor.explain.model import INDIRECT, Evidence
from doctor.explain.facts import as_num, fmt_s


class RecordInference:
    """Mixed into the per-experiment analysis (doctor.explain.analyze.ExperimentAnalysis); uses its
    record (`d`, `fg`, `rec`, `launch`, `preflight`), `facts`, `evidence` and chain lists."""

    # ----------------------------------------------------------------- only experiment.json

    def record_only_cause(self) -> Tuple[str, float]:
        f = self.facts
        self.pre_chain.append("No log was kept for this experiment; this is inferred from experiment.json "
                              "and its sibling experiments, not read from an error message.")
        msg = str(self.fg.get("error_message") or "")
        pattern = msg.split("Error pattern found:", 1)[-1].strip() if msg else ""
        if msg:
            self.evidence.append(self.jev("error_message"))
        self._energy_evidence()
        cid = cat.classify_text(pattern) if pattern else None
        if cid is None and pattern and re.search(r"out of memory", pattern, re.I):
            cid = "cuda.oom"
        if cid is not None:
            f["exc"] = f"\"{pattern}\" (the pattern mutation.py matched in the log; the message itself was not stored)"
            f["where"] = "experiment.json error_message"
            self._fill_from_text(cid, pattern, None)
            if cid == "cuda.oom":
                return self._oom_inference()
            return cid, 0.5
        return self.record_only_time_limit() or self._hub_inference() or self._unknown_record()

    def _energy_evidence(self) -> None:
        e = self.energy
        if self.duration is not None:
            self.evidence.append(self.jev("duration_seconds", f'"duration_seconds": {self.duration:.1f}'))
        if "gpu_util_max_percent" in e:
            self.evidence.append(Evidence("experiment.json", self.rec.line_of('"gpu_util_max_percent"'),
                                          f'"gpu_util_max_percent": {e.get("gpu_util_max_percent")}'))

    def _oom_inference(self) -> Tuple[str, float]:
        f = self.facts
        pmin = as_num(self.energy.get("gpu_power_min_watts"))
        others = [s.power_min for s in self.run.siblings
                  if not s.parallel and s.power_min is not None and s.path != self.folder]
        if not self.parallel and pmin is not None and pmin >= 100 and (not others or pmin >= 3 * min(others)):
            self.evidence.append(Evidence("experiment.json", self.rec.line_of('"gpu_power_min_watts"'),
                                          f'"gpu_power_min_watts": {pmin}, "gpu_util_avg_percent": '
                                          f'{self.energy.get("gpu_util_avg_percent")}'))
            cmp_ = f" (other experiments of this run start from {min(others):.1f} W)" if others else ""
            f["foreign_sentence"] = (
                f"The GPU never drew less than {pmin:.0f} W during this run{cmp_}: it was already busy at the "
                "first sample, before this experiment could have loaded anything. In a non-parallel experiment "
                "that points at another process on the GPU, such as an orphaned background job of an earlier "
                "batch (inferred from the energy record; the OOM message itself was not stored).")
            f["kill_cmd"] = "ps -o pid,ppid,user,etime,cmd -p \"$(nvidia-smi --query-compute-apps=pid --format=csv,noheader | paste -sd,)\""
            return "cuda.oom.foreign-process", 0.4
        if pmin is not None and not self.parallel:
            f["oom_detail_sentence"] = (f"The GPU was idle when the experiment started ({pmin:.1f} W at the lowest), so "
                                        "the memory went to this experiment itself: an oversized batch or model, or "
                                        "memory held by a process that was idle.")
        return "cuda.oom", 0.5

    def _hub_inference(self) -> Optional[Tuple[str, float]]:
        n = self.hub_need
        if n is None:
            return None
        umax = as_num(self.energy.get("gpu_util_max_percent"))
        early = (umax is not None and umax == 0) or (self.duration is not None and self.duration < 180)
        if not early:
            return None
        conf = 0.3
        f = self.facts
        mine = [s for s in self.run.siblings if s.repo == self.repo and s.model == self.model]
        mine_failed = [s for s in mine if s.ok is False]
        others_ok = [s for s in self.run.siblings if s.model != self.model and s.ok]
        others_ok_tv = [s for s in others_ok if any(w.kind == "torchvision" for w in
                                                     self.an.knowledge.weights(s.repo, s.model))]
        line, row = self.run.summary_line(self.eid)
        sib_text = (f"in {os.path.basename(self.run.folder)}: {self.model} {len(mine) - len(mine_failed)}/{len(mine)} "
                    f"succeeded; other models {len(others_ok)} succeeded"
                    + (f" (of them {len(others_ok_tv)} with torchvision weights: "
                       f"{', '.join(sorted({s.model for s in others_ok_tv}))})" if others_ok_tv else ""))
        self.evidence.append(Evidence("../summary.csv" if row else self.run.folder, line, sib_text))
        if mine and len(mine_failed) == len(mine) and others_ok:
            conf += 0.1
        retries = self.fg.get("retries")
        if isinstance(retries, int) and retries >= 2:
            conf += 0.05
            self.evidence.append(self.jev("retries"))
        others_tv = [m for m in self.an.knowledge.models_of(self.repo) if m != self.model and any(
            w.kind == "torchvision" for w in self.an.knowledge.weights(self.repo, m))]
        steps = []
        if others_tv:
            steps.append(f"Of this repo's models, {self.model} is the one whose weights come from the Hugging Face "
                         f"Hub; {', '.join(others_tv)} load torch hub checkpoints instead.")
        steps += [
            f"It failed after {fmt_s(self.duration)}"
            + (" with the GPU never used (gpu_util_max_percent 0)" if umax == 0 else "")
            + ", that is before training started, as a model load that fails does. For comparison, a "
              "timm hrnet_w18 load with an empty cache fails after 46 s against a refused Hub (23 s per "
              "file, 2 files), and in 0.03 s with HF_HUB_OFFLINE=1.",
        ]
        if mine and len(mine_failed) == len(mine):
            steps.append(f"Every {self.model} experiment in this run folder failed ({len(mine_failed)} of {len(mine)})"
                         + (f", while {len(others_ok)} experiments of other models succeeded"
                            + (f", including {', '.join(sorted({s.model for s in others_ok_tv}))} whose "
                               "weights come from the torch hub cache" if others_ok_tv else "")
                            if others_ok else "; no sibling of another model was kept to compare with") + ".")
        steps.append("Most likely the weights were not in the cache the run resolved (under plain sudo: "
                     "/root/.cache/huggingface/hub) and the Hub was unreachable. This is an inference with "
                     "low-to-medium confidence; rerun with our runner to record the real exception.")
        self.post_chain.extend(steps)
        f["offline_sentence"] = None
        return "hub.cache-miss", min(conf, INDIRECT)

    def _unknown_record(self) -> Tuple[str, float]:
        msg = str(self.fg.get("error_message") or "no error message recorded")
        self.facts["unknown_sentence"] = (f"experiment.json says only \"{msg}\", and nothing else that was "
                                          "kept points at a cause.")
        self.facts["log_path"] = os.path.join(self.folder, "experiment.json")
        return "unknown", 0.2

