"""One experiment's attempts, through a backend: timeouts, stop requests, retries, the background job.

Nothing here knows how a job runs: `run_attempt` drives a `runner.backends.base.Handle` (wait,
terminate, then kill after the grace period), `Background` keeps the parallel mode's background
job alive while the foreground runs, and `AttemptLoop` runs an experiment's attempts (a transient
failure is retried up to `max_retries`, each attempt's log kept) and reports how they ended.
"""
from __future__ import annotations

import datetime as _dt
import os
import signal
import time
from dataclasses import dataclass, field
from typing import IO, Callable, Dict, List, Mapping, Optional, Sequence

from runner.backends.base import TOKEN_VAR, Backend, Exit, Handle, JobSpec, StartError  # noqa: F401 - TOKEN_VAR re-exported

POLL = 0.25  # seconds between checks of timeout / Ctrl-C / background while a job is quiet
LOG = "training.log"


def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


class StopRequest:
    """Ctrl-C / SIGTERM / SIGHUP received by the runner: the first stops the current experiment
    within the grace period, a second one kills it at once."""

    def __init__(self):
        self.count = 0
        self.signum: Optional[int] = None
        self._old: Dict[int, object] = {}

    def install(self) -> "StopRequest":
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            try:
                if signal.getsignal(s) == signal.SIG_IGN:
                    continue  # `nohup` (SIGHUP) or a background job of a script (SIGINT): keep ignoring it
                self._old[s] = signal.signal(s, self._handle)
            except (ValueError, OSError):  # not the main thread
                pass
        return self

    def restore(self) -> None:
        for s, h in self._old.items():
            try:
                signal.signal(s, h)
            except (ValueError, OSError, TypeError):
                pass
        self._old.clear()

    def _handle(self, signum, frame):  # noqa: ARG002
        self.count += 1
        if self.signum is None:
            self.signum = signum

    @property
    def requested(self) -> bool:
        return self.count > 0

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


@dataclass
class AttemptResult:
    """How one job ended."""

    started: str
    duration: float
    exit_code: Optional[int]
    signal: Optional[str]
    timed_out: bool = False
    interrupted: bool = False
    start_error: str = ""
    job: Mapping[str, object] = field(default_factory=dict)
    stragglers: List[dict] = field(default_factory=list)


def _tell(stream: Optional[IO[bytes]], path: str, text: str) -> None:
    """A line of ours in the job's log (and on the terminal)."""
    from core.safefs import open_log

    try:  # our own log only: never appended to through a link or to a file this run did not create
        with open_log(path, append=True) as f:
            f.write(text.encode())
    except OSError:
        pass
    if stream is not None:
        try:
            stream.write(text.encode())
            stream.flush()
        except (OSError, ValueError):
            pass


def run_attempt(backend: Backend, spec: JobSpec, *, timeout: Optional[float], stop: StopRequest,
                stream: Optional[IO[bytes]] = None, tick: Optional[Callable[[], None]] = None) -> AttemptResult:
    """Run one job to its end, honouring the timeout and stop requests (terminate, then kill after
    `spec.grace`); returns how it ended. Never raises for a job that cannot start."""
    started, t0 = now_iso(), time.monotonic()
    try:
        handle = backend.start(spec, stream)
    except StartError as e:
        _tell(stream, spec.log_path, e.message + "\n")
        return AttemptResult(started, time.monotonic() - t0, exit_code=e.exit_code, signal=None, start_error=e.message)
    deadline = t0 + timeout if timeout else None
    kill_at: Optional[float] = None
    timed_out = interrupted = False
    while True:
        end = handle.wait(POLL)
        if end is not None:
            break
        now = time.monotonic()
        if stop.count >= 2 and kill_at is not None and now < kill_at:
            kill_at = now
        if kill_at is None:
            if stop.requested:
                interrupted = True
            elif deadline is not None and now >= deadline:
                timed_out = True
            if interrupted or timed_out:
                handle.terminate()
                kill_at = now + (0 if stop.count >= 2 else spec.grace)
        elif now >= kill_at:
            handle.kill()
            kill_at = float("inf")
        if tick is not None:
            tick()
    duration = time.monotonic() - t0
    strays = handle.cleanup()
    return AttemptResult(started, duration, exit_code=end.exit_code, signal=end.signal, timed_out=timed_out,
                         interrupted=interrupted, job=handle.record(), stragglers=strays)


class Background:
    """A parallel experiment's background job: started first, restarted whenever it exits while
    the foreground runs (with a back-off when it keeps failing fast), stopped at the end."""

    MIN_UPTIME = 2.0  # a job that ends sooner is failing fast: wait before restarting it, longer each time
    FIRST_BACKOFF = 0.25
    MAX_BACKOFF = 30.0

    def __init__(self, backend: Backend, spec: JobSpec):
        self.backend, self.spec = backend, spec
        self.handle: Optional[Handle] = None
        self.first: Optional[Handle] = None
        self.starts = 0
        self.exits: List[dict] = []
        self.start_error = ""
        self._started_at = 0.0
        self._restart_at: Optional[float] = None
        self._backoff = self.FIRST_BACKOFF

    def start(self) -> None:
        self.starts += 1
        _tell(None, self.spec.log_path, f"=== background start {self.starts} at {now_iso()}: {' '.join(self.spec.argv)}\n")
        try:
            self.handle = self.backend.start(self.spec)
        except StartError as e:
            self.start_error = e.message
            _tell(None, self.spec.log_path, e.message + "\n")
            self.handle = None
            self._restart_at = time.monotonic() + self.MAX_BACKOFF
            return
        self.first = self.first or self.handle
        self._started_at = time.monotonic()
        self._restart_at = None

    def tick(self) -> None:
        """Called while the foreground runs: restart the job when it has ended."""
        now = time.monotonic()
        end = self.handle.wait(0) if self.handle is not None else None
        if self.handle is not None and end is None:
            return
        if self.handle is not None:
            self._record_exit(end)
            self.handle.kill()  # leftovers of the finished job
            self.handle = None
            if now - self._started_at < self.MIN_UPTIME:
                self._restart_at = now + self._backoff
                self._backoff = min(self._backoff * 2, self.MAX_BACKOFF)
            else:
                self._restart_at = now
                self._backoff = self.FIRST_BACKOFF
        if self._restart_at is not None and now >= self._restart_at:
            self.start()

    def _record_exit(self, end: Exit, **more) -> None:
        self.exits.append({"exit_code": end.exit_code, "signal": end.signal,
                           "seconds": round(time.monotonic() - self._started_at, 3), **more})

    def stop(self) -> List[dict]:
        """Terminate, kill after the grace period; returns the leftovers of every start, stopped."""
        h = self.handle
        if h is not None:
            end = h.wait(0)
            if end is None:
                h.terminate()
                end = h.wait(self.spec.grace)
            h.kill()
            end = end or h.wait(5)
            if end is not None:
                self._record_exit(end, stopped=True)
            self.handle = None
        strays: List[dict] = []
        for handle in dict.fromkeys(x for x in (h, self.first) if x is not None):
            seen = {s["pid"] for s in strays}
            strays += [s for s in handle.cleanup() if s["pid"] not in seen]
        _tell(None, self.spec.log_path, f"=== background stopped at {now_iso()} after {self.starts} start(s)\n")
        return strays

    def record(self) -> dict:
        info = {"restarts": max(0, self.starts - 1), "exits": self.exits[-20:]}
        if self.start_error:
            info["start_error"] = self.start_error
        return info


@dataclass
class Attempts:
    """How an experiment's attempts ended: `status` passed / failed / interrupted, the failure
    reason (masked), every attempt's record, the last job result, leftovers found, the background."""

    status: str = "failed"
    failure: str = ""
    records: List[dict] = field(default_factory=list)
    last: Optional[AttemptResult] = None
    stragglers: List[dict] = field(default_factory=list)
    background: Optional[dict] = None


class AttemptLoop:
    """Runs one experiment's attempts through a backend: moves the previous attempt's log aside,
    journals each attempt, retries transient failures (`classify` over the log's tail) up to
    `max_retries` after `retry_delay`, keeps the background job (if any) running meanwhile."""

    def __init__(self, backend: Backend, spec: JobSpec, *, background: Optional[JobSpec], options, stop: StopRequest,
                 journal, say: Callable[..., None], experiment_id: str, stream: Optional[IO[bytes]] = None):
        self.backend, self.spec, self.bg_spec, self.opt = backend, spec, background, options
        self.stop, self.journal, self.say, self.eid, self.stream = stop, journal, say, experiment_id, stream

    def run(self, prior: Sequence[dict] = (), prior_stragglers: Sequence[dict] = ()) -> Attempts:
        out = Attempts(records=list(prior), stragglers=list(prior_stragglers))
        bg = Background(self.backend, self.bg_spec) if self.bg_spec is not None else None
        if bg is not None:
            bg.start()
        try:
            self._loop(out, bg)
        finally:
            if bg is not None:
                out.stragglers += bg.stop()
                out.background = bg.record()
        return out

    def _move_aside(self, attempts: List[dict], n: int) -> None:
        exp_dir = os.path.dirname(self.spec.log_path)
        if os.path.exists(self.spec.log_path) and attempts:
            prev = attempts[-1]
            aside = f"training.attempt{prev.get('attempt') or n - 1}.log"
            os.replace(self.spec.log_path, os.path.join(exp_dir, aside))
            prev["log"] = aside
            self.journal.write("attempt-log-moved", experiment_id=self.eid, attempt=prev.get("attempt"), log=aside)

    def _loop(self, out: Attempts, bg: Optional[Background]) -> None:
        from core.secrets import mask_text
        from runner.logtail import classify, read_tail

        opt, attempts = self.opt, out.records
        transient_used = sum(1 for a in attempts if a.get("retry_reason"))
        while True:
            n = max([a.get("attempt") or 0 for a in attempts] + [0]) + 1
            self._move_aside(attempts, n)
            self.journal.write("attempt-start", experiment_id=self.eid, attempt=n, log=LOG, started=now_iso())
            res = run_attempt(self.backend, self.spec, timeout=opt.timeout, stop=self.stop, stream=self.stream,
                              tick=bg.tick if bg else None)
            out.stragglers += res.stragglers
            out.last = res
            rec = {"attempt": n, "log": LOG, "started": res.started, "duration_seconds": round(res.duration, 3),
                   "exit_code": res.exit_code, "signal": res.signal, "timed_out": res.timed_out, "retry_reason": None}
            if res.job:
                rec["job"] = dict(res.job)
            if res.interrupted:
                rec["interrupted"] = True
            attempts.append(rec)
            if res.interrupted:
                out.status = "interrupted"
                out.failure = "stopped by " + ("Ctrl-C" if (self.stop.signum or 2) == 2 else f"signal {self.stop.signum}")
                break
            if res.exit_code == 0:
                out.status = "passed"
                break
            transient, reason = classify(read_tail(self.spec.log_path), res.exit_code, res.signal, res.timed_out)
            if res.start_error:
                transient, reason = False, res.start_error
            reason = mask_text(reason, self.spec.env)  # it quotes the log: it goes to the records and the terminal
            if res.timed_out:
                reason = f"timed out after {opt.timeout:g} s" + (f" ({reason})" if reason != "timeout" else "")
            out.failure = reason
            if transient and transient_used < opt.max_retries and not self.stop.requested:
                rec["retry_reason"] = reason
                transient_used += 1
                self.journal.write("attempt-end", experiment_id=self.eid, record=rec)
                self.say(f"    attempt {n} failed ({reason}); retrying ({transient_used}/{opt.max_retries})")
                if self._sleep(opt.retry_delay):
                    continue
                out.status, out.failure = "interrupted", "stopped by Ctrl-C between attempts"
                return
            if not transient:
                rec["not_retried"] = reason
            break
        self.journal.write("attempt-end", experiment_id=self.eid, record=rec)

    def _sleep(self, seconds: float) -> bool:
        """Wait between attempts; False when a stop was requested meanwhile."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.stop.requested:
                return False
            time.sleep(min(0.2, end - time.monotonic()))
        return not self.stop.requested
