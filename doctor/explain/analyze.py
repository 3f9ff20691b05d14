"""From result folders to explanations: status, cause, confidence, evidence, chain and fixes.

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
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from core.failures import catalogue as cat
from doctor.explain.knowledge import Knowledge, WeightsNeed
from doctor.explain.model import (BLOCKED, FAILED, INDIRECT, SUCCEEDED, SUSPICIOUS, BatchReport,
                                  Cause, Evidence, Explanation, NeedUse)
from doctor.explain.readers import (DEFAULT_CAP, FIRST_BLOCK, SUCCESS_BLOCK, ExplainInputError, JsonRecord, Tail,
                                    clean_line, find_experiments, read_experiment_json, read_small_text)
from core.failures.traceback import Chain, ExceptionRecord, find_fatal
from core.secrets import mask_text

TB_MARK = "Traceback (most recent call last)"
TB_MARK_B = TB_MARK.encode()
_EXIT_B = b"exit code"
_EXIT_LINE = re.compile(rb"exit code[:\s]+(-?\d+)")
# Cheap byte tests (case-insensitive enough) before the suspicious-text regex runs.
_SUSPECT_KEYS = (b"mplemented", b"kipping training", b"o training", b"othing to train", b"ry run", b"ry-run")
_SUSPECT_TEXT = re.compile(r"not (?:yet )?implemented|NotImplementedError|skipping training|"
                           r"no training (?:was )?(?:performed|done)|nothing to train|\bdry[- ]run\b|"
                           r"TODO: train", re.I)
_HUB_URL = re.compile(r"(https?://[^\s'\"/]+)/([\w.-]+/[\w.-]+)/resolve/([^/\s]+)/([^\s'\"]+?)[.']?(?:\s|$|')")
_PY_LINE = re.compile(r"(?:Using Python|Python(?: interpreter)?|PYTHON(?:_PATH)?)\s*[:=]\s*(/\S+)")
_NOT_FOUND_AT = re.compile(r"(?:not found at|No such file or directory)[:\s]*'?(/\S+?)'?(?:\s|$)")
_TORCH_DL = re.compile(r'Downloading: "([^"]+)" to (\S+)')
_SIGNALS = {9: "SIGKILL", 2: "SIGINT", 15: "SIGTERM", 1: "SIGHUP", 6: "SIGABRT", 11: "SIGSEGV"}
INTERRUPT_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")
# Causes that mean the Hub weights were not in the cache the run used (the fallback missed).
HUB_CACHE_MISSED = ("hub.cache-miss", "hub.cache-miss.sudo-home", "hub.connection", "hub.tls", "hub.timeout")
SHORT_FACTOR = 0.2  # "far shorter than its siblings": under a fifth of their median ...
SHORT_MIN_GAP = 60.0  # ... and at least a minute shorter (quick demo runs are not suspicious)
SUSPECT_WINDOW = 4 * 1024  # "not yet implemented" and the like: searched in the last 4 KiB
LOG_NAMES = ("training.log", "terminal_output.txt")


# --------------------------------------------------------------------------- helpers

def _list(x) -> list:
    return x if isinstance(x, list) else []


def _dict(x) -> dict:
    return x if isinstance(x, dict) else {}


def _str(x) -> Optional[str]:
    """A recorded string (path, name), or None for anything else."""
    return x if isinstance(x, str) and x else None


def _num(x) -> Optional[float]:
    try:
        return None if x is None or isinstance(x, bool) else float(x)
    except (TypeError, ValueError):
        return None


def _fmt_s(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


_SHELL_CODES = {130: "SIGINT", 137: "SIGKILL", 143: "SIGTERM"}


def _signal_name(sig: Any, code: Optional[int], recorded: bool = False) -> str:
    """The signal that ended a process: the recorded one, a negative exit code (subprocess), or
    (when no signal was recorded at all) a shell's 128+N code."""
    if isinstance(sig, str) and sig:
        return sig if sig.startswith("SIG") else "SIG" + sig
    if isinstance(sig, int):
        return _SIGNALS.get(sig, f"signal {sig}")
    if code is not None:
        if code < 0:
            return _SIGNALS.get(-code, f"signal {-code}")
        if not recorded:
            return _SHELL_CODES.get(code, "")
    return ""


def _short(text: str, n: int = 110) -> str:
    return text if len(text) <= n else text[:n].rstrip() + "…"


def _clean_msg(line: str) -> str:
    """A tool message without its decoration (perf's `\\___` pointer, bullets)."""
    return line.strip().lstrip("\\_-*> ").strip()


def _signal_text(sig: str, code: Optional[int]) -> str:
    if sig and code is not None:
        return f"{sig} (exit code {code})"
    return sig or (f"exit code {code}" if code is not None else "a signal")


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


@dataclass
class LogScan:
    """One log read from its end: the window, the fatal chain (if any), the exit code line."""

    name: str
    path: str
    tail: Tail
    chain: Optional[Chain] = None
    exit_code: Optional[int] = None
    exit_pos: Optional[int] = None
    exit_line: str = ""

    @property
    def exit_index(self) -> Optional[int]:
        return None if self.exit_pos is None else self.tail.index_of(self.exit_pos)

    def where(self, index: int) -> str:
        """`file:line`, plus the section for terminal_output.txt (its STDERR part follows STDOUT)."""
        loc = f"{self.name}:{self.tail.line_number(index)}"
        if self.name.endswith("terminal_output.txt"):
            pos = self.tail.data.rfind(b"\nSTDERR:\n")
            if pos >= 0:
                loc += " (STDERR section)" if index > self.tail.index_of(pos) else " (STDOUT section)"
        return loc

    def ev(self, index, text: Optional[str] = None, count: bool = True) -> Evidence:
        """Evidence for lines[index]; `index` may be a callable giving it (computed only if needed)."""
        if not count and not self.tail.at_file_start and text is not None:
            return Evidence(self.name, None, text)
        if callable(index):
            index = index()
        return Evidence(self.name, self.tail.line_number(index, count),
                        text if text is not None else self.tail.line(index))


def scan_log(folder: str, name: str, want_chain: bool, cap: int, first: int = FIRST_BLOCK) -> Optional[LogScan]:
    path = name if os.path.isabs(name) else os.path.join(folder, name)
    tail = Tail.open(path, first=first, cap=cap)
    if tail is None:
        return None
    rel = path[len(folder) + 1:] if path.startswith(folder + os.sep) else path
    scan = LogScan(rel, path, tail)
    if want_chain:
        while True:
            if TB_MARK_B in tail.data:
                ch = find_fatal(tail.lines)
                if ch is not None and (not ch.truncated or tail.at_file_start):
                    scan.chain = ch
                    break
            if not tail.grow():
                if TB_MARK_B in tail.data:
                    scan.chain = find_fatal(tail.lines)
                break
    elif TB_MARK_B in tail.data:
        scan.chain = find_fatal(tail.lines)
    data = tail.data
    at = data.rfind(_EXIT_B)
    while at >= 0:
        m = _EXIT_LINE.match(data, at)
        if m:
            scan.exit_code = int(m.group(1))
            scan.exit_pos = at
            start = data.rfind(b"\n", 0, at) + 1
            end = data.find(b"\n", at)
            scan.exit_line = clean_line(data[start:end if end >= 0 else len(data)].decode("utf-8", "replace"))
            break
        at = data.rfind(_EXIT_B, 0, at)
    return scan


def suspect_line(scan: "LogScan") -> Optional[int]:
    """Index of the last line that says the run did not really train ("not yet implemented")."""
    data = scan.tail.data
    base = max(0, len(data) - SUSPECT_WINDOW)
    if base:
        base = data.find(b"\n", base) + 1
    near_end = data[base:]
    if not any(k in near_end for k in _SUSPECT_KEYS):
        return None
    text = near_end.decode("utf-8", "replace")
    m = None
    for m in _SUSPECT_TEXT.finditer(text):
        pass
    return None if m is None else scan.tail.index_of(base) + text.count("\n", 0, m.start())


def _last_lines(scan: LogScan, n: int = 40) -> List[Tuple[int, str]]:
    out = []
    for i, ln in scan.tail.iter_back():
        s = ln.strip()
        if s and not set(s) <= set("=-*#") and s not in ("STDERR:", "STDOUT:", "(empty)"):
            out.append((i, ln))
            if len(out) >= n:
                break
    return out


def _text_cause(scan: LogScan, after: int = -1) -> Optional[Tuple[str, int]]:
    """The cause named by a tool/shell message near the end of the log (below index `after`)."""
    for i, ln in _last_lines(scan):
        if i <= after:
            break
        cid = cat.classify_text(ln.strip())
        if cid:
            return cid, i
    return None


# --------------------------------------------------------------------------- one experiment

class Analyzer:
    """Explains experiments; one per batch (holds the registry knowledge and options)."""

    def __init__(self, registry: Optional[str] = None, cap: int = DEFAULT_CAP,
                 rerun_path: Optional[str] = None):
        self.knowledge = Knowledge(registry)
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
            return _One(self, folder, rec, run).explain()
        except Exception as exc:  # a record shaped in a way nobody foresaw: report it, go on
            return _unexplained(folder, rec, run, f"could not be explained: {type(exc).__name__}: {exc}",
                                f"The explanation itself failed on this folder ({type(exc).__name__} at "
                                f"{traceback_location(exc)}); its outcome is unknown.")


def _unexplained(folder: str, rec: JsonRecord, run: RunContext, evidence: str, step: str) -> Explanation:
    """A failed experiment whose outcome is unknown: its record could not be read or explained."""
    return Explanation(
        os.path.basename(folder), folder, FAILED, Cause("unknown", cat.BY_ID["unknown"].title, 0.1),
        (Evidence("experiment.json", None, evidence),), (step,), (f"cat {rec.path}",), run=run.folder)


class _One:
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
        self.attempts = [a for a in _list(d.get("attempts")) if isinstance(a, dict)]
        self.preflight = _dict(d.get("preflight"))
        launch = _dict(d.get("launch"))
        # Only string values of the launch record are used as paths and names.
        self.launch = {k: (v if isinstance(v, (str, dict, list)) else None) for k, v in launch.items()}
        for k in ("how", "user", "home", "hf_cache", "torch_hub", "invoking_user", "invoking_home"):
            self.launch[k] = _str(launch.get(k))
        for k in ("hf_cache", "torch_hub"):
            if k in self.preflight and not _str(self.preflight.get(k)):
                self.preflight = dict(self.preflight, **{k: None})
        self.duration = _num(self.fg.get("duration_seconds", d.get("duration_seconds")))
        if self.duration is None and self.attempts:
            self.duration = _num(self.attempts[-1].get("duration_seconds"))
        self.energy = self.fg.get("energy_metrics") if isinstance(self.fg.get("energy_metrics"), dict) else {}
        self.metrics = self.fg.get("performance_metrics")
        self.evidence: List[Evidence] = []
        self.pre_chain: List[str] = []
        self.post_chain: List[str] = []
        self.extra_fix: List[str] = []
        self.notes: List[str] = []
        self.facts: Dict[str, Any] = {}
        self.scans: Dict[str, LogScan] = {}
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
        f["duration_text"] = _fmt_s(self.duration)
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
        sc = scan_log(self.folder, name, want_chain=True, cap=self.an.cap) \
            if os.path.isfile(os.path.join(self.folder, name)) else None
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

    _FINDING_MAP = (
        ("system.gpu.stray", "cuda.oom.foreign-process"), ("system.gpu.arch", "cuda.arch"),
        ("system.gpu", "cuda.unavailable"), ("system.cuda", "cuda.unavailable"),
        ("system.perf", "perf.unavailable"), ("system.energy", "perf.unavailable"),
        ("system.owner", "permission.denied"), ("cache.permission", "permission.denied"),
        ("system.interpreter", "python.interpreter-missing"), ("env.python", "python.interpreter-missing"),
        ("cache.python", "python.interpreter-missing"), ("system.module", "python.module-missing"),
        ("env.module", "python.module-missing"), ("cache.path", "data.missing"), ("system.dataset", "data.missing"),
        ("cache.torch", "torchhub.download"), ("cache.torchvision", "torchhub.download"),
        ("cache.hub", "hub.cache-miss"), ("cache.timm", "hub.cache-miss"), ("cache.hf", "hub.cache-miss"),
        ("env.offline", "hub.cache-miss"), ("network.tls", "hub.tls"), ("network.proxy", "hub.proxy"),
        ("network.not-a-hub", "hub.proxy"), ("network.connect-timeout", "hub.timeout"),
        ("network.read-timeout", "hub.timeout"), ("network.tls-timeout", "hub.timeout"),
        ("network.http-status", "hub.not-found"), ("network", "hub.connection"), ("settings", "config.error"),
    )

    def blocked_cause(self) -> Tuple[str, float]:
        ids = [str(x) for x in _list(self.preflight.get("blocked_by"))]
        findings = {str(f.get("id")): f for f in _list(self.preflight.get("findings")) if isinstance(f, dict)}
        cid = "unknown"
        for fid in ids:
            for prefix, mapped in self._FINDING_MAP:
                if fid == prefix or fid.startswith(prefix + "."):
                    cid = mapped
                    break
            if cid != "unknown":
                break
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
        if cid == "hub.cache-miss":
            cid = self._sudo_home(cid, from_preflight=True)
        self.facts.setdefault("where", "preflight")
        return cid, 0.9

    # ----------------------------------------------------------------- failed

    def failed_cause(self) -> Tuple[str, float]:
        sig_cause = self.signal_cause()
        scans: List[LogScan] = []
        for n in self.log_names():  # the next log only when this one has no fatal exception
            sc = self.log(n, want_chain=sig_cause is None)
            if sc is not None:
                scans.append(sc)
                if sc.chain is not None or sig_cause is not None:
                    break
        if sig_cause is not None:
            self._last_line_fact(scans)
            return sig_cause
        for s in scans:
            if s.exit_code is not None:
                self.facts.setdefault("exit_text", f"exit code {s.exit_code}")
        # The fatal exception in the logs.
        for s in scans:
            if s.chain is not None:
                got = self.chain_cause(s)
                if got is not None:
                    return got
        # Tool and shell messages at the end of the logs.
        for s in scans:
            got = _text_cause(s)
            if got is not None:
                cid, i = got
                self.evidence.append(s.ev(i))
                msg = _clean_msg(s.tail.lines[i])
                self._fill_from_text(cid, msg, s)
                self.facts.setdefault("exc", msg)
                self.facts.setdefault("fatal", _short(msg))
                self.facts.setdefault("where", s.where(i))
                return self.sharpen(cid, 0.75)
        # A traceback that matched nothing in the catalogue.
        for s in scans:
            if s.chain is not None:
                return self.unknown_from_chain(s)
        got = self.excerpt_cause()
        if got is not None:
            return got
        if scans:
            i_l = _last_lines(scans[0], 1)
            if i_l:
                self.evidence.append(scans[0].ev(i_l[0][0]))
            self.facts["unknown_sentence"] = ("The log ends without an error message; the process "
                                              "failed" + (f" with {self.facts['exit_text']}" if "exit_text" in self.facts else "") + ".")
            self.facts["log_path"] = scans[0].path
            return "unknown", 0.3
        return self.record_only_cause()

    def signal_cause(self) -> Optional[Tuple[str, float]]:
        last = self.attempts[-1] if self.attempts else {}
        code = last.get("exit_code", self.d.get("exit_code"))
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        sig = _signal_name(last.get("signal"), code, recorded="signal" in last)
        timed_out = bool(last.get("timed_out"))
        f = self.facts
        f["signal_text"] = _signal_text(sig, code)
        if self.attempts:
            where = self.rec.line_of('"attempts"')
            desc = f"attempt {last.get('attempt', len(self.attempts))}: exit_code {code}, signal {sig or None}, " \
                   f"timed_out {str(timed_out).lower()}, {_fmt_s(_num(last.get('duration_seconds')))}"
            ev = Evidence("experiment.json", where, desc)
        else:
            ev = None
        if timed_out:
            self.evidence.append(ev)
            dur = _num(last.get("duration_seconds")) or self.duration
            f["duration_text"] = _fmt_s(dur)
            f["bigger_timeout"] = str(max(60, int(round((dur or 3600) * 2))))
            return "timeout", 0.95
        if sig == "SIGKILL":
            self.evidence.append(ev or self.jev("exit_code"))
            return "killed", 0.85
        if sig in INTERRUPT_SIGNALS or self.d.get("status") == "interrupted":
            if ev or "exit_code" in self.d:
                self.evidence.append(ev or self.jev("exit_code"))
            if "status" in self.d:
                self.evidence.append(self.jev("status"))
            return "interrupted", 0.9
        return None

    def _last_line_fact(self, scans: Sequence[LogScan]) -> None:
        for s in scans:
            ll = _last_lines(s, 1)
            if ll:
                i, ln = ll[0]
                self.evidence.append(s.ev(i))
                self.facts["last_line_sentence"] = (f"The last thing it printed was \"{ln.strip()[:160]}\" "
                                                    f"({s.name}:{s.tail.line_number(i)}).")
                self.facts["log_path"] = s.path
                return

    def chain_cause(self, s: LogScan) -> Optional[Tuple[str, float]]:
        ch = s.chain
        cid, rec = cat.decisive(ch)
        if cid is None:
            return None
        fatal = ch.fatal
        self.evidence.append(s.ev(rec.index, rec.line_text))
        if rec is not fatal:
            self.evidence.append(s.ev(fatal.index, fatal.line_text))
        f = self.facts
        f["exc"] = rec.line_text
        f["fatal"] = fatal.name if rec is not fatal else _short(fatal.line_text)
        f["where"] = s.where(rec.index)
        f["log_path"] = s.path
        self._fill_from_window(s, cid)
        self._fill_from_exception(cid, rec, ch)
        return self.sharpen(cid, 0.9)

    def unknown_from_chain(self, s: LogScan) -> Tuple[str, float]:
        fatal = s.chain.fatal
        self.evidence.append(s.ev(fatal.index, fatal.line_text))
        where = s.where(fatal.index)
        frame = fatal.frames[-1] if fatal.frames else None
        at = f" in {frame.file}:{frame.line} ({frame.func})" if frame else ""
        self.facts["unknown_sentence"] = (f"The process ended with {fatal.line_text} ({where}){at}. "
                                          "No catalogue rule matches it; read the traceback there.")
        self.facts["log_path"] = s.path
        return "unknown", 0.3

    def excerpt_cause(self) -> Optional[Tuple[str, float]]:
        ex = self.d.get("error_excerpt")
        if not isinstance(ex, list) or not ex:
            return None
        lines = [str(x) for x in ex]
        ch = find_fatal(lines)
        line0 = self.rec.line_of('"error_excerpt"')
        if ch is not None:
            cid, rec = cat.decisive(ch)
            if cid:
                self.evidence.append(Evidence("experiment.json", line0, "error_excerpt: " + rec.line_text))
                self.facts.update(exc=rec.line_text, fatal=ch.fatal.line_text, where="experiment.json error_excerpt")
                self._fill_from_exception(cid, rec, ch)
                return self.sharpen(cid, 0.8)
        for ln in reversed(lines):
            cid = cat.classify_text(ln.strip())
            if cid:
                self.evidence.append(Evidence("experiment.json", line0, "error_excerpt: " + ln.strip()))
                self.facts.update(exc=ln.strip(), fatal=ln.strip(), where="experiment.json error_excerpt")
                self._fill_from_text(cid, ln.strip(), None)
                return self.sharpen(cid, 0.75)
        return None

    # ----------------------------------------------------------------- facts from logs

    def _fill_from_window(self, s: LogScan, cid: str = "") -> None:
        f = self.facts
        text = s.tail.text[-FIRST_BLOCK:]
        m = None
        if (cid.startswith("hub.") or not cid) and "/resolve/" in text:
            for m in _HUB_URL.finditer(text):
                pass
        if m is not None:
            f["endpoint_or_default"] = m.group(1)
            f.setdefault("hub_repo", m.group(2))
            if not f.get("need"):
                f["need"] = f"{m.group(2)} ({m.group(4)})"
        m = None
        if "ython" in text or "PYTHON" in text:
            for m in _PY_LINE.finditer(text):
                pass
        if m is not None:
            f["python_or_env"] = m.group(1)
            f["python_cmd"] = m.group(1)
            f["python_abs"] = m.group(1)
        m = _TORCH_DL.search(text) if 'Downloading: "' in text else None
        if m:
            f["download_sentence"] = f" from {m.group(1)} to {m.group(2)}"
            f["checkpoint"] = os.path.basename(m.group(2))
            f["torch_hub"] = os.path.dirname(os.path.dirname(m.group(2)))
            if os.path.exists(m.group(2) + ".partial") or any(
                    p.endswith(".partial") for p in _listdir(os.path.dirname(m.group(2)))):
                f["partial_sentence"] = "A *.partial file was left behind in the checkpoints folder; delete it."

    def _fill_from_exception(self, cid: str, rec: ExceptionRecord, ch: Optional[Chain]) -> None:
        f = self.facts
        msg = rec.full_message
        if cid == "hub.cache-miss":
            if any(r.name == "OfflineModeIsEnabled" for r in (ch.records if ch else ())) or \
                    "offline mode is enabled" in msg:
                f["offline_sentence"] = ("HF_HUB_OFFLINE=1 was set, so no request was made and only the "
                                         "local cache counted.")
            else:
                f["offline_sentence"] = ("The Hub could not be reached or answered without the file, and the "
                                         "local-cache fallback found nothing.")
        if cid in ("hub.connection", "hub.tls", "hub.timeout") and ch is not None and \
                any(cat._CACHE_MISS.search(r.line_text) for r in ch.records):
            f["hub_fallback_sentence"] = cat._HUB_NOTE.format(hf_cache_or_run=f["hf_cache_or_run"])
        if cid == "python.module-missing":
            mod = cat.module_name(msg) or "a module"
            f["module"] = mod
            top = mod.split(".")[0]
            f["module_pkg"] = cat.PIP_NAMES.get(top, top)
        if cid in ("data.missing", "python.interpreter-missing", "permission.denied"):
            self._path_facts(cid, cat.missing_path(msg))
        if cid.startswith("cuda.oom"):
            m = re.search(r"Tried to allocate [^.;]+(?:\.\d+)? ?[GMK]iB[^)\n]*\)?", msg)
            if m:
                f["oom_detail_sentence"] = f"The allocator reported: {m.group(0).strip()}."
            self._batch_facts()
        if cid == "hub.proxy":
            px = [k for k in _dict(self.launch.get("env_set")) if "proxy" in k.lower()]
            if px:
                f["proxy_sentence"] = f" ({', '.join(sorted(px))} set by the launch)"

    def _fill_from_text(self, cid: str, line: str, s: Optional[LogScan]) -> None:
        f = self.facts
        if s is not None:
            self._fill_from_window(s, cid)
            f["log_path"] = s.path
        if cid == "python.interpreter-missing":
            m = _NOT_FOUND_AT.search(line) or re.search(r"(/\S*python[\d.]*)", line)
            if m:
                f["python_path"] = m.group(1).rstrip(":'")
        if cid in ("data.missing", "permission.denied"):
            m = re.search(r"(/\S+)", line)
            self._path_facts(cid, (cat.missing_path(line) or (m.group(1) if m else "")).rstrip(":'"))
        if cid.startswith("cuda.oom"):
            self._batch_facts()
        if cid == "killed":
            f.setdefault("signal_text", "SIGKILL (the shell printed \"Killed\")")

    def _path_facts(self, cid: str, p: str) -> None:
        """The path a data.missing, python.interpreter-missing or permission.denied message names."""
        if not p:
            return
        f = self.facts
        f[{"data.missing": "missing_path", "python.interpreter-missing": "python_path",
           "permission.denied": "denied_path"}[cid]] = p
        f["missing_path_or_file"] = p
        if cid == "permission.denied":
            f["denied_dir"] = p if os.path.isdir(p) else os.path.dirname(p) or p

    def _batch_facts(self) -> None:
        hp = self.fg.get("hyperparameters") or {}
        bs = _num(hp.get("batch_size"))
        if bs is not None and bs >= 1:
            bs = int(bs)
            self.facts["batch_sentence"] = f"The batch size was {bs}; halving it halves most activation memory."
            self.facts["batch_fix"] = f"# rerun with \"batch_size\": {max(1, int(bs) // 2)} in the rerun settings file"
        if self.parallel:
            bg = _dict(self.d.get("background"))
            self.facts["parallel_sentence"] = (
                f"This was a parallel experiment: the background job {bg.get('repository') or bg.get('repo')}/"
                f"{bg.get('model')} shared the GPU by design and held part of its memory.")

    # ----------------------------------------------------------------- records sharpen causes

    def _need_record(self, kinds: Tuple[str, ...]) -> Optional[Mapping[str, Any]]:
        for n in self.preflight.get("needs") or []:
            if isinstance(n, dict) and n.get("kind") in kinds:
                if n.get("status") in ("missing", "unreadable") or n.get("found_elsewhere"):
                    return n
        return None

    def _sudo_home(self, cid: str, from_preflight: bool = False) -> str:
        n = self._need_record(("timm", "hf"))
        if n is None:
            return cid
        f = self.facts
        f["need"] = f.get("need") or n.get("key")
        if n.get("key"):
            f["need"] = f"{n.get('key')}" + (f" ({f['hub_repo']})" if f.get("hub_repo") else "")
        elsewhere = [str(p) for p in _list(n.get("found_elsewhere"))]
        home, inv = self.launch.get("home"), self.launch.get("invoking_home")
        if n.get("path"):
            f.setdefault("hf_cache", os.path.dirname(str(n["path"])) if "/models--" in str(n["path"]) else None)
        ev_line = self.rec.line_of('"found_elsewhere"')
        if elsewhere:
            self.evidence.append(Evidence("experiment.json", ev_line,
                                          f"preflight need {n.get('key')}: {n.get('status')} in {f.get('hf_cache')}; "
                                          f"found elsewhere: {', '.join(elsewhere)}"))
            f["found_elsewhere"] = elsewhere[0]
            f["found_cache"] = elsewhere[0].split("/models--")[0]
            f["hf_cache_fix"] = f["found_cache"]
            repo_id = f.get("hub_repo") or (self.hub_need.hub_repo if self.hub_need else "")
            if "/models--" in elsewhere[0]:
                f["found_entry"] = elsewhere[0]
            elif repo_id:
                f["found_entry"] = os.path.join(f["found_cache"], "models--" + repo_id.replace("/", "--"))
        if elsewhere and home and inv and home != inv and any(p.startswith(inv.rstrip("/") + "/") for p in elsewhere):
            self.evidence.append(Evidence("experiment.json", self.rec.line_of('"launch"'),
                                          f"launch: how={self.launch.get('how')} user={self.launch.get('user')} "
                                          f"home={home} invoking_home={inv}"))
            f["network_sentence"] = self._network_sentence(from_preflight)
            return "hub.cache-miss.sudo-home"
        if elsewhere:
            f["found_sentence"] = (f"The preflight record shows it at {elsewhere[0]}, a cache this run did not use.")
            return "hub.cache-miss"
        return cid

    def _network_sentence(self, from_preflight: bool) -> str:
        if from_preflight:
            return "The runner held the experiment back instead of letting it fail."
        exc = self.facts.get("exc")
        if exc and "LocalEntryNotFound" not in exc and "OfflineModeIsEnabled" not in exc:
            return (f"The Hub was not reachable ({exc}); that alone is harmless when the cache holds the "
                    "files, because huggingface_hub falls back to it.")
        return "With the Hub unreachable or offline mode on, the cache was the only source, and it missed."

    def sharpen(self, cid: str, conf: float) -> Tuple[str, float]:
        if cid in ("hub.cache-miss", "hub.connection", "hub.tls", "hub.timeout"):
            lenf = any("LocalEntryNotFound" in e.text or "OfflineModeIsEnabled" in e.text for e in self.evidence)
            if cid == "hub.cache-miss" or lenf:
                new = self._sudo_home(cid)
                if new != cid:
                    return new, 0.95
        if cid == "cuda.oom":
            procs = [p for p in _list(self.d.get("gpu_foreign_processes")) if isinstance(p, dict)]
            if procs:
                desc = "; ".join(f"pid {p.get('pid')} ({p.get('user')}: {str(p.get('cmdline'))[:80]}) "
                                 f"holding {p.get('memory_mib')} MiB" for p in procs)
                self.evidence.append(Evidence("experiment.json", self.rec.line_of('"gpu_foreign_processes"'),
                                              "gpu_foreign_processes before start: " + desc))
                self.facts["foreign_sentence"] = (f"Before the experiment started, the runner saw GPU memory held "
                                                  f"by processes that are not part of this batch: {desc}.")
                self.facts["kill_cmd"] = "kill " + " ".join(str(p.get("pid")) for p in procs)
                return "cuda.oom.foreign-process", 0.9
        return cid, conf

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
        return self._hub_inference() or self._unknown_record()

    def _energy_evidence(self) -> None:
        e = self.energy
        if self.duration is not None:
            self.evidence.append(self.jev("duration_seconds", f'"duration_seconds": {self.duration:.1f}'))
        if "gpu_util_max_percent" in e:
            self.evidence.append(Evidence("experiment.json", self.rec.line_of('"gpu_util_max_percent"'),
                                          f'"gpu_util_max_percent": {e.get("gpu_util_max_percent")}'))

    def _oom_inference(self) -> Tuple[str, float]:
        f = self.facts
        pmin = _num(self.energy.get("gpu_power_min_watts"))
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
        umax = _num(self.energy.get("gpu_util_max_percent"))
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
            f"It failed after {_fmt_s(self.duration)}"
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
            isinstance(w, str) and "no log_patterns" in w for w in _list(self.d.get("warnings")))
        if not has_metrics and not no_patterns and (self.metrics is not None or self.layout == "user"):
            self.evidence.append(self.jev("performance_metrics", f'"performance_metrics": {self.metrics!r}'))
            suspicions.append("No metric was found in its output (performance_metrics is empty).")
            for w in _list(self.d.get("warnings")):
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
                suspicions.append(f"It ran {_fmt_s(self.duration)}; the median of the {len(sibs)} other successful "
                                  f"{self.model} runs in this batch is {_fmt_s(med)}.")
        epochs = _num((self.fg.get("hyperparameters") or {}).get("epochs"))
        if self.duration is not None and epochs and epochs >= 2 and self.duration < epochs * 1.0 and not has_metrics:
            suspicions.append(f"{_fmt_s(self.duration)} for {int(epochs)} epochs is less than a second per epoch.")
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
        env = {k: v for k, v in _dict(self.launch.get("env_set")).items() if isinstance(v, str)}
        ev = tuple(dict.fromkeys(Evidence(e.file, e.line, mask_text(e.text[:500], env)) for e in self.evidence if e))
        bg = self.d.get("background") if self.parallel and isinstance(self.d.get("background"), dict) else None
        return Explanation(
            experiment_id=self.eid, path=self.folder, status=status, cause=c, evidence=ev,
            chain=tuple(mask_text(x, env) for x in chain), fix=tuple(mask_text(x, env) for x in fix),
            run=self.run.folder, layout=self.layout, repo=self.repo, model=self.model,
            mode="parallel" if self.parallel else "default",
            hyperparameters=dict(self.fg.get("hyperparameters") or {}), background=bg,
            duration=self.duration, timestamp=str(self.d.get("timestamp") or ""),
            needs=self.need_uses(status, c), notes=tuple(self.notes))

    def need_uses(self, status: str, cause: Optional[Cause]) -> Tuple[NeedUse, ...]:
        label = f"{self.repo}/{self.model}"
        out: List[NeedUse] = []
        recs = [n for n in _list(self.preflight.get("needs")) if isinstance(n, dict)
                and n.get("kind") in ("timm", "hf", "torchvision")]
        if recs:
            for n in recs:
                kind = n.get("kind")
                cache = (self.preflight.get("hf_cache") or self.launch.get("hf_cache")) if kind in ("timm", "hf") \
                    else (self.preflight.get("torch_hub") or self.launch.get("torch_hub"))
                st = _str(n.get("status"))
                present = {"present": "yes", "missing": "no"}.get(st or "", "unknown")
                out.append(NeedUse(label, str(n.get("key")), "Hugging Face Hub" if kind in ("timm", "hf")
                                   else "torch hub download", str(cache or n.get("path") or "not recorded"),
                                   present, "preflight record" + (f" (found elsewhere: {', '.join(str(x) for x in _list(n.get('found_elsewhere')))})"
                                                                  if _list(n.get("found_elsewhere")) else "")))
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


def traceback_location(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}" if tb else "?"


def _listdir(d: str) -> List[str]:
    try:
        return os.listdir(d)
    except OSError:
        return []


# --------------------------------------------------------------------------- batches

def _sibling(folder: str, rec: JsonRecord) -> Sibling:
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
    return Sibling(str(fg.get("repository") or fg.get("repo") or ""), str(fg.get("model") or ""), par, ok,
                   _num(fg.get("duration_seconds")), _num(en.get("gpu_power_min_watts")), folder)


def _run_members(run_folder: str) -> List[str]:
    try:
        with os.scandir(run_folder) as it:
            subs = [e.path for e in it if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []
    return sorted(p for p in subs if os.path.isfile(os.path.join(p, "experiment.json")))[:5000]


PARALLEL_MIN = 500  # experiments; below this a pool costs more than it saves


def _explain_runs(an: Analyzer, runs: Sequence[Tuple[str, List[str]]], single_folder: Optional[str]
                  ) -> List[Explanation]:
    out: List[Explanation] = []
    for run_folder, members in runs:
        recs = [(f, read_experiment_json(f)) for f in members]
        if single_folder and recs[0][1].data is None:
            raise ExplainInputError(f"{recs[0][1].path}: {recs[0][1].error}")
        context = recs
        if single_folder:  # one experiment asked for: its run folder's other experiments are still evidence
            context = recs + [(f, read_experiment_json(f)) for f in _run_members(run_folder) if f != single_folder]
        ctx = RunContext(run_folder, [_sibling(f, r) for f, r in context])
        for f, r in recs:
            out.append(an.explain(f, r, ctx))
    return out


_WORKER_ANALYZER: Optional[Analyzer] = None


def _worker_init(registry, cap, rerun_path) -> None:
    global _WORKER_ANALYZER
    _WORKER_ANALYZER = Analyzer(registry, cap, rerun_path)


def _worker(runs) -> List[Explanation]:
    return _explain_runs(_WORKER_ANALYZER, runs, None)


def default_jobs(n_experiments: int, n_runs: int) -> int:
    if n_experiments < PARALLEL_MIN or n_runs < 2:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus, n_runs))


def explain_path(path: str, registry: Optional[str] = None, cap: int = DEFAULT_CAP,
                 rerun_path: Optional[str] = None, jobs: Optional[int] = None) -> BatchReport:
    """Explain every experiment under PATH. Raises readers.ExplainInputError for an unusable PATH.

    Large batches are spread over `jobs` worker processes, one run folder at a time (siblings
    are compared within a run folder, so a run never needs two workers)."""
    t0 = time.perf_counter()
    folders = find_experiments(path)
    single = folders[0] if len(folders) == 1 and os.path.abspath(path) == folders[0] else None
    by_run: Dict[str, List[str]] = {}
    for f in folders:
        by_run.setdefault(os.path.dirname(f), []).append(f)
    runs = list(by_run.items())
    jobs = default_jobs(len(folders), len(runs)) if jobs is None else max(1, min(jobs, len(runs)))
    if jobs == 1:
        out = _explain_runs(Analyzer(registry, cap, rerun_path), runs, single)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # Chunks of whole run folders, about 4 per worker, in order.
        size = max(1, len(folders) // (jobs * 4))
        chunks, cur, n = [], [], 0
        for run in runs:
            cur.append(run)
            n += len(run[1])
            if n >= size:
                chunks.append(cur)
                cur, n = [], 0
        if cur:
            chunks.append(cur)
        ctx = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                                 initargs=(registry, cap, rerun_path)) as pool:
            out = [e for part in pool.map(_worker, chunks) for e in part]
    return BatchReport(os.path.abspath(path), tuple(by_run), tuple(out), time.perf_counter() - t0)
