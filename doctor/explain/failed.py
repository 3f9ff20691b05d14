"""Causes of a failed experiment from its logs: the signal or timeout the runner recorded, the fatal
exception followed down its chain, tool and shell messages, the runner's error excerpt; and the facts
those give the catalogue's templates."""
from __future__ import annotations

import os
import re
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from core.failures import catalogue as cat
from core.failures.traceback import Chain, ExceptionRecord, find_fatal
from doctor.explain.model import Evidence
from doctor.explain.readers import FIRST_BLOCK
from doctor.explain.facts import (INTERRUPT_SIGNALS, as_dict, as_list, as_num, clean_msg, fmt_s, listdir,
                                  shorten, signal_name, signal_text)
from doctor.explain.logscan import LogScan, last_lines, text_cause


_HUB_URL = re.compile(r"(https?://[^\s'\"/]+)/([\w.-]+/[\w.-]+)/resolve/([^/\s]+)/([^\s'\"]+?)[.']?(?:\s|$|')")
_PY_LINE = re.compile(r"(?:Using Python|Python(?: interpreter)?|PYTHON(?:_PATH)?)\s*[:=]\s*(/\S+)")
_NOT_FOUND_AT = re.compile(r"(?:not found at|No such file or directory)[:\s]*'?(/\S+?)'?(?:\s|$)")
_TORCH_DL = re.compile(r'Downloading: "([^"]+)" to (\S+)')


_OOM_PROC = re.compile(r"Process (\d+) has ([\d.]+ [GMK]iB) memory in use")
_OOM_SELF = re.compile(r"this process has ([\d.]+ [GMK]iB) memory in use")


def foreign_in_oom_message(msg: str) -> List[Tuple[str, str]]:
    """(pid, memory) of the other processes a torch CUDA OOM message lists: it names every process
    on the device ("Process 4242 has 5.50 GiB memory in use") and this one's own share ("this
    process has 2.10 GiB memory in use"); the entry matching its own share is this process."""
    own = _OOM_SELF.search(msg)
    if own is None:
        return []
    procs = _OOM_PROC.findall(msg)
    for i, (_, mem) in enumerate(procs):
        if mem == own.group(1):
            return procs[:i] + procs[i + 1:]
    return procs if len(procs) >= 2 else []  # own share not listed as such: two or more are not all ours


class FailureCauses:
    """Mixed into the per-experiment analysis (doctor.explain.analyze.ExperimentAnalysis); uses its
    record (`d`, `fg`, `rec`, `launch`, `preflight`), `facts`, `evidence` and chain lists."""

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
        if self.layout == "user":
            limit = self.time_limit_cause(scans, recorded_success=False)
            if limit is not None:
                return limit
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
            got = text_cause(s)
            if got is not None:
                cid, i = got
                self.evidence.append(s.ev(i))
                msg = clean_msg(s.tail.lines[i])
                self._fill_from_text(cid, msg, s)
                self.facts.setdefault("exc", msg)
                self.facts.setdefault("fatal", shorten(msg))
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
            i_l = last_lines(scans[0], 1)
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
        sig = signal_name(last.get("signal"), code, recorded="signal" in last)
        timed_out = bool(last.get("timed_out"))
        f = self.facts
        f["signal_text"] = signal_text(sig, code)
        if self.attempts:
            where = self.rec.line_of('"attempts"')
            desc = f"attempt {last.get('attempt', len(self.attempts))}: exit_code {code}, signal {sig or None}, " \
                   f"timed_out {str(timed_out).lower()}, {fmt_s(as_num(last.get('duration_seconds')))}"
            ev = Evidence("experiment.json", where, desc)
        else:
            ev = None
        slurm = self.slurm_time_limit()
        if slurm is not None:
            return slurm
        if timed_out:
            self.evidence.append(ev)
            dur = as_num(last.get("duration_seconds")) or self.duration
            f["duration_text"] = fmt_s(dur)
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
            ll = last_lines(s, 1)
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
        f["fatal"] = fatal.name if rec is not fatal else shorten(fatal.line_text)
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
                    p.endswith(".partial") for p in listdir(os.path.dirname(m.group(2)))):
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
                any(cat.is_cache_miss(r.line_text) for r in ch.records):
            f["hub_fallback_sentence"] = cat.HUB_NOTE.format(hf_cache_or_run=f["hf_cache_or_run"])
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
            self.oom_others = foreign_in_oom_message(msg)
            self._batch_facts()
        if cid == "disk.full":
            p = cat.missing_path(msg)
            f["full_dir"] = os.path.dirname(p) if p and os.path.dirname(p) else None
        if cid == "hub.proxy":
            px = [k for k in as_dict(self.launch.get("env_set")) if "proxy" in k.lower()]
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
        bs = as_num(hp.get("batch_size"))
        if bs is not None and bs >= 1:
            bs = int(bs)
            self.facts["batch_sentence"] = f"The batch size was {bs}; halving it halves most activation memory."
            self.facts["batch_fix"] = f"# rerun with \"batch_size\": {max(1, int(bs) // 2)} in the rerun settings file"
        if self.parallel:
            bg = as_dict(self.d.get("background"))
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
        elsewhere = [str(p) for p in as_list(n.get("found_elsewhere"))]
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
        if cid == "cuda.oom" and self.oom_others:
            others = self.oom_others
            desc = "; ".join(f"pid {pid} holding {mem}" for pid, mem in others)
            self.facts["foreign_sentence"] = (f"The CUDA error lists GPU memory held by other processes: {desc} "
                                              "(torch names every process on the device in its message).")
            self.facts["kill_cmd"] = "ps -o pid,user,etime,cmd -p " + ",".join(pid for pid, _ in others)
            return "cuda.oom.foreign-process", min(conf, 0.85)
        if cid == "cuda.oom":
            procs = [p for p in as_list(self.d.get("gpu_foreign_processes")) if isinstance(p, dict)]
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

