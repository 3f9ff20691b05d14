"""From one result folder to its explanation: status, cause, confidence, evidence, chain and fixes.

Evidence is weighed in this order: our runner's records of how the process ended (timeout,
signal), the fatal exception of the last attempt's log (followed down its chain of causes),
tool and shell messages at the end of the log, the runner's error excerpt, and finally, for
folders that kept no log (the user's old runs), experiment.json and its sibling experiments,
with a confidence of 0.5 or less.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from typing import Any, Dict, List, Mapping, Optional, Tuple

from core.failures import catalogue as cat
from core.secrets import mask_text
from doctor.explain.knowledge import Knowledge, WeightsNeed
from doctor.explain.model import BLOCKED, FAILED, SUCCEEDED, SUSPICIOUS, Cause, Evidence, Explanation, NeedUse
from doctor.explain.readers import DEFAULT_CAP, FIRST_BLOCK, JsonRecord
from doctor.explain.facts import as_dict, as_list, as_num, as_str, fmt_s, traceback_location
from doctor.explain.logscan import LogScan, scan_log
from doctor.explain.siblings import RunContext
from doctor.explain.failed import FailureCauses
from doctor.explain.record import RecordInference
from doctor.explain.success import SuccessCheck
from doctor.explain.metrics import MetricsCheck
from doctor.explain.timelimit import TimeLimit

# --------------------------------------------------------------------------- one experiment

# Evidence files that are records, not logs.
RECORD_FILES = ("experiment.json", "../summary.csv")
# Causes that mean the Hub weights were not in the cache the run used (the fallback missed).
HUB_CACHE_MISSED = ("hub.cache-miss", "hub.cache-miss.sudo-home", "hub.connection", "hub.tls", "hub.timeout")
LOG_NAMES = ("training.log", "terminal_output.txt")





class Analyzer:
    """Explains experiments; one per batch (holds the registry knowledge and options)."""

    def __init__(self, registry: Optional[str] = None, cap: int = DEFAULT_CAP,
                 rerun_path: Optional[str] = None,
                 reference: Optional[Mapping[Tuple[str, str], Tuple[float, ...]]] = None):
        self.knowledge = Knowledge(registry)
        self.reference = reference or {}  # (repo, model) -> durations of its runs with metrics
        self.cap = cap
        self.rerun_path = rerun_path
        self.mutation_run = self._mutation_run()

    @staticmethod
    def _mutation_run() -> str:
        exe = os.path.join(os.path.dirname(sys.executable), "mutation-run")
        return exe if os.path.exists(exe) else (shutil.which("mutation-run") or "mutation-run")

    # ----------------------------------------------------------------- entry

    def explain(self, folder: str, rec: JsonRecord, run: RunContext) -> Explanation:
        if rec.data is None:
            return _unexplained(folder, rec, run, rec.error,
                                f"experiment.json could not be read ({rec.error}); the experiment's outcome is unknown.")
        try:
            return ExperimentAnalysis(self, folder, rec, run).explain()
        except Exception as exc:  # a record shaped in a way nobody foresaw: report it, go on
            return _unexplained(folder, rec, run, f"could not be explained: {type(exc).__name__}: {exc}",
                                f"The explanation itself failed on this folder ({type(exc).__name__} at "
                                f"{traceback_location(exc)}); its outcome is unknown.")


_SEP = "\n\x1f\n"


def mask_all(texts: List[str], env: Mapping[str, str]) -> List[str]:
    """Every text masked (core.secrets) in one pass over them joined; one by one if a text holds the
    separator."""
    joined = mask_text(_SEP.join(texts), env)
    parts = joined.split(_SEP)
    return parts if len(parts) == len(texts) else [mask_text(t, env) for t in texts]


def declared_cause(finding_id: str) -> Optional[str]:
    """The catalogue cause declared for a finding id (core.findings), or None when none is declared."""
    try:
        from core.findings import cause_for
    except ImportError:  # pragma: no cover - the declarations ship with the core
        return None
    try:
        cid = cause_for(finding_id)
    except (KeyError, LookupError, ValueError):
        return None
    return cid if cid in cat.BY_ID else None


def _unexplained(folder: str, rec: JsonRecord, run: RunContext, evidence: str, step: str) -> Explanation:
    """A failed experiment whose outcome is unknown: its record could not be read or explained."""
    return Explanation(
        os.path.basename(folder), folder, FAILED, Cause("unknown", cat.BY_ID["unknown"].title, 0.1),
        (Evidence("experiment.json", None, evidence),), (step,), (f"cat {rec.path}",), run=run.folder)


class ExperimentAnalysis(FailureCauses, RecordInference, SuccessCheck, MetricsCheck, TimeLimit):
    """The state of explaining one experiment (facts accumulate as evidence is read)."""

    def __init__(self, an: Analyzer, folder: str, rec: JsonRecord, run: RunContext):
        self.an, self.folder, self.rec, self.run = an, folder, rec, run
        d = rec.data
        self.d = d
        self.parallel = isinstance(d.get("foreground"), dict)
        self.fg = d["foreground"] if self.parallel else d
        if not isinstance(self.fg.get("hyperparameters"), (dict, type(None))):
            self.fg = dict(self.fg, hyperparameters={})
        self.repo = str(self.fg.get("repository") or self.fg.get("repo") or "")
        self.model = str(self.fg.get("model") or "")
        self.eid = str(d.get("experiment_id") or os.path.basename(folder))
        self.layout = "runner" if any(k in d for k in ("status", "attempts", "preflight", "launch")) else "user"
        self.attempts = [a for a in as_list(d.get("attempts")) if isinstance(a, dict)]
        self.preflight = as_dict(d.get("preflight"))
        launch = as_dict(d.get("launch"))
        # Only string values of the launch record are used as paths and names.
        self.launch = {k: (v if isinstance(v, (str, dict, list)) else None) for k, v in launch.items()}
        for k in ("how", "user", "home", "hf_cache", "torch_hub", "invoking_user", "invoking_home"):
            self.launch[k] = as_str(launch.get(k))
        for k in ("hf_cache", "torch_hub"):
            if k in self.preflight and not as_str(self.preflight.get(k)):
                self.preflight = dict(self.preflight, **{k: None})
        self.duration = as_num(self.fg.get("duration_seconds", d.get("duration_seconds")))
        if self.duration is None and self.attempts:
            self.duration = as_num(self.attempts[-1].get("duration_seconds"))
        self.energy = self.fg.get("energy_metrics") if isinstance(self.fg.get("energy_metrics"), dict) else {}
        self.metrics = self.fg.get("performance_metrics")
        self.evidence: List[Evidence] = []
        self.pre_chain: List[str] = []
        self.post_chain: List[str] = []
        self.extra_fix: List[str] = []
        self.notes: List[str] = []
        self.facts: Dict[str, Any] = {}
        self.scans: Dict[str, LogScan] = {}
        self.oom_others: List[Tuple[str, str]] = []  # other processes a CUDA OOM message lists
        self.hub_need: Optional[WeightsNeed] = an.knowledge.hub_need(self.repo, self.model)
        self.weights = an.knowledge.weights(self.repo, self.model)

    # ----------------------------------------------------------------- small utilities

    def jev(self, key: str, text: Optional[str] = None) -> Evidence:
        """Evidence pointing at a key of experiment.json."""
        line = self.rec.line_of(f'"{key}"')
        if text is None:
            v = self.fg.get(key, self.d.get(key))
            text = f'"{key}": {v!r}' if not isinstance(v, str) else f'"{key}": "{v}"'
        return Evidence("experiment.json", line, text)

    def log(self, name: str, want_chain: bool, first: int = FIRST_BLOCK) -> Optional[LogScan]:
        key = f"{name}|{want_chain}|{first}"
        if key not in self.scans:
            self.scans[key] = scan_log(self.folder, name, want_chain, self.an.cap, first)
        return self.scans[key]

    def log_names(self) -> List[str]:
        if self.layout == "runner":
            last = self.attempts[-1].get("log") if self.attempts else None
            names = [last if isinstance(last, str) and last else "training.log"]
            if "terminal_output.txt" not in names:
                names.append("terminal_output.txt")
            return names
        return list(LOG_NAMES)

    def base_facts(self) -> None:
        f = self.facts
        f["model_label"] = f"{self.repo}/{self.model}" if self.repo else self.model or self.eid
        f["duration_text"] = fmt_s(self.duration)
        if self.an.rerun_path:
            f["rerun"] = self.an.rerun_path
            f["rerun_cmd"] = f"{self.an.mutation_run} -ec {self.an.rerun_path}"
        home = self.launch.get("home")
        inv_home = self.launch.get("invoking_home")
        f["home"] = home
        f["invoking_home"] = inv_home
        f["invoking_user"] = self.launch.get("invoking_user")
        f["user"] = self.launch.get("user")
        f["launch_how"] = self.launch.get("how")
        hf = self.launch.get("hf_cache") or self.preflight.get("hf_cache")
        th = self.launch.get("torch_hub") or self.preflight.get("torch_hub")
        f["hf_cache"] = hf
        f["torch_hub"] = th or ("/root/.cache/torch/hub" if home == "/root" else None)
        f["hf_cache_or_run"] = hf or ("the cache the process resolved (not recorded; under plain "
                                      "sudo that is /root/.cache/huggingface/hub)")
        user_home = inv_home  # recorded by our runner; otherwise $HOME, expanded by the user's own shell
        f["hf_cache_fix"] = (os.path.join(user_home, ".cache/huggingface/hub") if user_home
                             else "$HOME/.cache/huggingface/hub")
        f["torch_home_fix"] = (os.path.join(user_home, ".cache/torch") if user_home else "$HOME/.cache/torch")
        if self.hub_need:
            n = self.hub_need
            f["need"] = (f"{n.hub_repo} (timm model {n.name}; timm tries model.safetensors, then "
                         f"pytorch_model.bin)" if n.kind == "timm" else n.label)
            f["hub_repo"] = n.hub_repo
            f["timm_name"] = n.name if n.kind == "timm" else None
            f["loader_sentence"] = " through timm (no torch hub fallback)" if n.kind == "timm" else ""
        for w in self.weights:
            if w.kind == "torchvision":
                f["checkpoint"] = w.file or f"the {w.name} checkpoint"
        if self.layout == "runner" and os.path.isdir(self.run.folder):
            f["resume_cmd"] = f"{self.an.mutation_run} --resume {self.run.folder}"
        elif self.an.rerun_path:
            f["resume_cmd"] = f"{self.an.mutation_run} -ec {self.an.rerun_path}"
        since = (self.attempts[-1].get("started") if self.attempts else None) or self.d.get("timestamp")
        f["since"] = str(since)[:19].replace("T", " ") if since else None
        f["endpoint_or_default"] = "https://huggingface.co (default endpoint)"
        f["python_cmd"] = "python3"
        f["python_abs"] = sys.executable
        f["python_or_env"] = "the interpreter the train script started; not recorded"
        f["missing_path_or_file"] = "a file"
        f["invoking_user"] = f.get("invoking_user") or (os.path.basename(user_home) if user_home else None)
        f["owner"] = f["invoking_user"] or "$USER"

    def attempts_sentence(self) -> None:
        f = self.facts
        if self.layout == "runner" and len(self.attempts) > 1:
            reasons = [str(a.get("retry_reason")) for a in self.attempts if a.get("retry_reason")]
            extra = f" (retried for: {', '.join(sorted(set(reasons)))})" if reasons else ""
            f["attempts_sentence"] = f"The runner made {len(self.attempts)} attempts{extra}; the last one is explained here, earlier logs are kept next to it."
        elif self.layout == "user":
            r = self.fg.get("retries")
            if isinstance(r, int) and r > 0:
                f["attempts_sentence"] = (f"mutation.py recorded retries={r}: every attempt ended the same way, "
                                          "and each retry overwrote the previous attempt's log.")

    # ----------------------------------------------------------------- status

    def explain(self) -> Explanation:
        self.base_facts()
        self.attempts_sentence()
        status = self._recorded_status()
        cause: Optional[Tuple[str, float]] = None
        if status == BLOCKED:
            cause = self.blocked_cause()
        elif status == FAILED:
            cause = self.failed_cause()
        else:
            status, cause = self.check_success()
        if status == FAILED and self.parallel:
            self.background_note()
        return self.finish(status, cause)

    def background_note(self) -> None:
        """A parallel experiment's background job: how its log ends, if it ended with an error."""
        bg = self.d.get("background") if isinstance(self.d.get("background"), dict) else {}
        name = str(bg.get("log") or "background.log")
        sc = scan_log(self.folder, name, want_chain=True, cap=self.an.cap)
        if sc is None or sc.chain is None:
            return
        fat = sc.chain.fatal
        self.evidence.append(sc.ev(fat.index, fat.line_text))
        self.post_chain.append(f"The background job ({bg.get('repository') or bg.get('repo')}/{bg.get('model')}) "
                               f"logged {fat.line_text} ({sc.where(fat.index)}).")

    def _recorded_status(self) -> str:
        st = self.d.get("status")
        if st == "blocked":
            return BLOCKED
        if st in ("failed", "interrupted"):
            return FAILED
        if st == "passed":
            return SUCCEEDED
        ok = self.fg.get("training_success")
        if ok is None and "exit_code" in self.d:
            ok = self.d.get("exit_code") == 0
        return SUCCEEDED if ok else FAILED

    # ----------------------------------------------------------------- blocked

    def blocked_cause(self) -> Tuple[str, float]:
        ids = [str(x) for x in as_list(self.preflight.get("blocked_by"))]
        findings = {str(f.get("id")): f for f in as_list(self.preflight.get("findings")) if isinstance(f, dict)}
        cid = next((c for c in map(declared_cause, ids) if c), None)
        for fid in ids or ["(none recorded)"]:
            f = findings.get(fid, {})
            self.evidence.append(Evidence("experiment.json", self.rec.line_of(f'"{fid}"'),
                                          f"preflight blocked_by {fid}: {f.get('title', '')}".rstrip(": ")))
            for fx in f.get("fix") or []:
                if fx not in self.extra_fix:
                    self.extra_fix.append(str(fx))
        titles = "; ".join(f"{findings.get(i, {}).get('title') or i} ({i})" for i in ids) or "no finding ids recorded"
        self.pre_chain.append(f"The preflight check ran before the experiment and blocked it: {titles}.")
        self.pre_chain.append("The runner did not start it, so no time was spent on a run that would have failed.")
        self.facts.setdefault("where", "preflight")
        if cid is None:
            self.facts["unknown_sentence"] = ("No failure cause is declared for " + (", ".join(ids) or "its findings")
                                              + "; the findings above say what the preflight saw.")
            self.facts["log_path"] = self.rec.path
            return "unknown", 0.3
        if cid == "hub.cache-miss":
            cid = self._sudo_home(cid, from_preflight=True)
        return cid, 0.9


    # ----------------------------------------------------------------- result

    def finish(self, status: str, cause: Optional[Tuple[str, float]]) -> Explanation:
        chain: Tuple[str, ...] = tuple(self.pre_chain)
        fix: Tuple[str, ...] = ()
        c = None
        if cause is not None:
            cid, conf = cause
            rule = cat.BY_ID[cid]
            self.facts.setdefault("exc", self.facts.get("fatal"))
            body = cat.render_lines(rule.chain, self.facts)
            tail = (self.facts["attempts_sentence"],) if self.facts.get("attempts_sentence") else ()
            chain = tuple(self.pre_chain) + body + tuple(self.post_chain) + tail
            fix = tuple(dict.fromkeys(tuple(self.extra_fix) + cat.render_lines(rule.fix, self.facts)))
            title = cat.render_lines((rule.title,), self.facts) or (re.sub(r"\s*\([^)]*\{[^}]+\}[^)]*\)|\{[^}]+\}", "", rule.title),)
            c = Cause(cid, title[0], round(min(1.0, max(0.0, conf)), 2))
        else:
            chain = chain + tuple(self.post_chain)
        env = {k: v for k, v in as_dict(self.launch.get("env_set")).items() if isinstance(v, str)}
        evidence = [e for e in self.evidence if e]
        texts = mask_all([e.text[:500] for e in evidence] + list(chain) + list(fix) + self.notes
                         + ([c.title] if c else []), env)
        n_ev, n_ch, n_fx = len(evidence), len(chain), len(fix)
        ev = tuple(dict.fromkeys(Evidence(e.file, e.line, t) for e, t in zip(evidence, texts)))
        chain, fix = tuple(texts[n_ev:n_ev + n_ch]), tuple(texts[n_ev + n_ch:n_ev + n_ch + n_fx])
        notes = tuple(texts[n_ev + n_ch + n_fx:n_ev + n_ch + n_fx + len(self.notes)])
        if c is not None:
            c = Cause(c.id, texts[-1], c.confidence)
        bg = self.d.get("background") if self.parallel and isinstance(self.d.get("background"), dict) else None
        return Explanation(
            experiment_id=self.eid, path=self.folder, status=status, cause=c, evidence=ev, chain=chain, fix=fix,
            run=self.run.folder, layout=self.layout, repo=self.repo, model=self.model,
            mode="parallel" if self.parallel else "default",
            hyperparameters=dict(self.fg.get("hyperparameters") or {}), background=bg,
            duration=self.duration, timestamp=str(self.d.get("timestamp") or ""),
            needs=self.need_uses(status, c), notes=notes,
            basis="log" if any(v.file not in RECORD_FILES and not os.path.isabs(v.file) for v in ev) else "record")

    def need_uses(self, status: str, cause: Optional[Cause]) -> Tuple[NeedUse, ...]:
        label = f"{self.repo}/{self.model}"
        out: List[NeedUse] = []
        recs = [n for n in as_list(self.preflight.get("needs")) if isinstance(n, dict)
                and n.get("kind") in ("timm", "hf", "torchvision")]
        if recs:
            for n in recs:
                kind = n.get("kind")
                cache = (self.preflight.get("hf_cache") or self.launch.get("hf_cache")) if kind in ("timm", "hf") \
                    else (self.preflight.get("torch_hub") or self.launch.get("torch_hub"))
                st = as_str(n.get("status"))
                present = {"present": "yes", "missing": "no"}.get(st or "", "unknown")
                out.append(NeedUse(label, str(n.get("key")), "Hugging Face Hub" if kind in ("timm", "hf")
                                   else "torch hub download", str(cache or n.get("path") or "not recorded"),
                                   present, "preflight record" + (f" (found elsewhere: {', '.join(str(x) for x in as_list(n.get('found_elsewhere')))})"
                                                                  if as_list(n.get("found_elsewhere")) else "")))
            return tuple(out)
        for w in self.weights:
            hub = w.kind in ("timm", "hf")
            if status in (SUCCEEDED, SUSPICIOUS):
                present = "yes"
                basis = "inferred: the run succeeded"
            elif cause is not None and (cause.id in HUB_CACHE_MISSED if hub else cause.id == "torchhub.download"):
                present = "no"
                basis = f"inferred from the failure ({cause.id}, confidence {cause.confidence})"
            else:
                present, basis = "unknown", "not recorded"
            cache = self.facts.get("hf_cache") if hub else self.launch.get("torch_hub")
            cache = cache or "not recorded"
            out.append(NeedUse(label, w.key + (f" ({w.hub_repo})" if w.hub_repo else f" ({w.file})" if w.file else ""),
                               w.source, cache, present, basis))
        return tuple(out)

