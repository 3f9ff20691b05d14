"""Starting training processes and making sure they end.

Every child gets its own session (`start_new_session=True`), so its process group holds it and
every descendant that does not escape on purpose; a timeout, Ctrl-C or the end of a parallel
experiment signals the whole group: SIGTERM, then SIGKILL after a grace period. Output (stdout and
stderr merged, in order) is written to the attempt's log and streamed to the terminal. After each
experiment, `stragglers()` finds what is still alive (same process group, recorded descendants,
or the run token in the environment, which survives `setsid` and double forks) and kills it.
"""
from __future__ import annotations

import datetime as _dt
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import IO, Callable, Dict, List, Mapping, Optional, Sequence, Set

TOKEN_VAR = "MUTATION_RUN_ID"
POLL = 0.25  # seconds between checks of timeout / Ctrl-C / background while a child is quiet
DESCENDANT_SCAN = 2.0  # seconds between snapshots of a child's descendants


def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"SIG{num}"


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
    """How one process run ended."""

    started: str
    duration: float
    exit_code: Optional[int]
    signal: Optional[str]
    timed_out: bool = False
    interrupted: bool = False
    pid: int = 0
    start_error: str = ""
    descendants: Set[int] = field(default_factory=set)


def _killpg(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _descendants(pid: int) -> Set[int]:
    try:
        import psutil

        return {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except Exception:  # noqa: BLE001 - the process may be gone; nothing to record
        return set()


def start(argv: Sequence[str], cwd: str, env: Mapping[str, str], stdout) -> subprocess.Popen:
    return subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=stdout,
                            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)


def run_attempt(argv: Sequence[str], cwd: str, env: Mapping[str, str], log_path: str, *,
                timeout: Optional[float], grace: float, stop: StopRequest,
                stream: Optional[IO[bytes]] = None, tick: Optional[Callable[[], None]] = None) -> AttemptResult:
    """Run one process to its end, its output into `log_path` (and `stream`), honouring the
    timeout and stop requests; returns how it ended. Never raises for a child that cannot start."""
    started_iso, t0 = now_iso(), time.monotonic()
    log = open(log_path, "wb")
    try:
        try:
            proc = start(argv, cwd, env, subprocess.PIPE)
        except OSError as e:
            msg = f"cannot start {argv[0]!r} in {cwd}: {e.strerror or e}\n"
            log.write(msg.encode())
            if stream is not None:
                stream.write(msg.encode())
                stream.flush()
            return AttemptResult(started_iso, time.monotonic() - t0, exit_code=127 if isinstance(e, FileNotFoundError) else 126,
                                 signal=None, start_error=msg.strip())
        fd = proc.stdout.fileno()
        os.set_blocking(fd, False)
        pgid = proc.pid
        deadline = t0 + timeout if timeout else None
        kill_at: Optional[float] = None
        timed_out = interrupted = False
        eof = False
        exited_at: Optional[float] = None
        descendants: Set[int] = set()
        next_scan = t0 + 0.5
        while True:
            if not eof:
                try:
                    ready, _, _ = select.select([fd], [], [], POLL)
                except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for safety
                    ready = []
                if ready:
                    try:
                        data = os.read(fd, 1 << 16)
                    except BlockingIOError:
                        data = None
                    if data == b"":
                        eof = True
                    elif data:
                        log.write(data)
                        if stream is not None:
                            try:
                                stream.write(data)
                                stream.flush()
                            except (OSError, ValueError):
                                stream = None
            else:
                time.sleep(POLL if proc.poll() is None else 0)
            now = time.monotonic()
            if proc.poll() is not None:
                if exited_at is None:
                    exited_at = now
                    descendants |= _descendants(proc.pid)
                # the leader is gone: finish when its output ends, or shortly after if a
                # descendant still holds the pipe open (it is a straggler, dealt with later)
                if eof or now - exited_at > 0.5:
                    break
                continue
            if now >= next_scan:
                descendants |= _descendants(proc.pid)
                next_scan = now + DESCENDANT_SCAN
            if stop.count >= 2 and kill_at is not None and now < kill_at:
                kill_at = now
            if kill_at is None:
                if stop.requested:
                    interrupted = True
                elif deadline is not None and now >= deadline:
                    timed_out = True
                if interrupted or timed_out:
                    _killpg(pgid, signal.SIGTERM)
                    kill_at = now + (0 if stop.count >= 2 else grace)
            elif now >= kill_at:
                _killpg(pgid, signal.SIGKILL)
                kill_at = float("inf")
            if tick is not None:
                tick()
        rc = proc.wait()
        # anything left in the group after the leader ended is terminated now
        if _killpg(pgid, signal.SIGTERM):
            time.sleep(0.05)
            _killpg(pgid, signal.SIGKILL)
        proc.stdout.close()
        return AttemptResult(started_iso, time.monotonic() - t0, exit_code=rc if rc >= 0 else None,
                             signal=signal_name(-rc) if rc < 0 else None, timed_out=timed_out,
                             interrupted=interrupted, pid=proc.pid, descendants=descendants)
    finally:
        log.close()


class Background:
    """A parallel experiment's background job: started first, restarted whenever it exits while
    the foreground runs (with a back-off when it keeps failing fast), stopped by group at the end."""

    MIN_UPTIME = 2.0
    MAX_BACKOFF = 30.0

    def __init__(self, argv: Sequence[str], cwd: str, env: Mapping[str, str], log_path: str, grace: float):
        self.argv, self.cwd, self.env, self.log_path, self.grace = list(argv), cwd, dict(env), log_path, grace
        self.proc: Optional[subprocess.Popen] = None
        self.log = None
        self.starts = 0
        self.exits: List[dict] = []
        self.pgids: Set[int] = set()
        self.descendants: Set[int] = set()
        self.start_error = ""
        self._started_at = 0.0
        self._restart_at: Optional[float] = None
        self._backoff = 1.0
        self._next_scan = 0.0

    def start(self) -> None:
        if self.log is None:
            self.log = open(self.log_path, "ab")
        self.starts += 1
        self.log.write(f"=== background start {self.starts} at {now_iso()}: {' '.join(self.argv)}\n".encode())
        self.log.flush()
        try:
            self.proc = start(self.argv, self.cwd, self.env, self.log)
        except OSError as e:
            self.start_error = f"cannot start {self.argv[0]!r} in {self.cwd}: {e.strerror or e}"
            self.log.write((self.start_error + "\n").encode())
            self.log.flush()
            self.proc = None
            self._restart_at = time.monotonic() + self.MAX_BACKOFF
            return
        self.pgids.add(self.proc.pid)
        self._started_at = time.monotonic()
        self._restart_at = None

    def tick(self) -> None:
        """Called while the foreground runs: restart the job when it has ended."""
        now = time.monotonic()
        if self.proc is not None and self.proc.poll() is None:
            if now >= self._next_scan:
                self.descendants |= _descendants(self.proc.pid)
                self._next_scan = now + DESCENDANT_SCAN
            return
        if self.proc is not None:
            rc = self.proc.returncode
            self.exits.append({"exit_code": rc if rc >= 0 else None, "signal": signal_name(-rc) if rc < 0 else None,
                               "seconds": round(now - self._started_at, 3)})
            _killpg(self.proc.pid, signal.SIGKILL)  # leftovers of the finished job
            self.proc = None
            uptime = now - self._started_at
            self._backoff = min(self._backoff * 2, self.MAX_BACKOFF) if uptime < self.MIN_UPTIME else 1.0
            self._restart_at = now + (self._backoff if uptime < self.MIN_UPTIME else 0)
        if self._restart_at is not None and now >= self._restart_at:
            self.start()

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL after the grace period; every group it ever had is killed."""
        if self.proc is not None and self.proc.poll() is None:
            self.descendants |= _descendants(self.proc.pid)
            _killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.grace)
            except subprocess.TimeoutExpired:
                pass
        for pgid in self.pgids:
            _killpg(pgid, signal.SIGKILL)
        if self.proc is not None:
            try:
                rc = self.proc.wait(timeout=5)
                self.exits.append({"exit_code": rc if rc >= 0 else None, "signal": signal_name(-rc) if rc < 0 else None,
                                   "seconds": round(time.monotonic() - self._started_at, 3), "stopped": True})
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
                pass
            self.proc = None
        if self.log is not None:
            self.log.write(f"=== background stopped at {now_iso()} after {self.starts} start(s)\n".encode())
            self.log.close()
            self.log = None


def stragglers(pgids: Set[int], pids: Set[int], token: Optional[str]) -> List[dict]:
    """Processes of an experiment still alive: in one of its process groups, recorded as a
    descendant, or carrying its run token. Zombies are dead and not reported."""
    import psutil

    me = os.getpid()
    found: Dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["pid"]):
        if p.pid == me:
            continue
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            hit = p.pid in pids
            if not hit and pgids:
                try:
                    hit = os.getpgid(p.pid) in pgids
                except OSError:
                    hit = False
            if not hit and token:
                try:
                    hit = p.environ().get(TOKEN_VAR) == token
                except (psutil.AccessDenied, psutil.ZombieProcess, OSError):
                    hit = False
            if hit:
                found[p.pid] = p
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    out = []
    for pid, p in sorted(found.items()):
        try:
            cmd = " ".join(p.cmdline())[:300]
        except (psutil.Error, OSError):
            cmd = ""
        out.append({"pid": pid, "cmdline": cmd})
    return out


def kill_stragglers(pgids: Set[int], pids: Set[int], token: Optional[str], grace: float = 2.0) -> List[dict]:
    """Find what is left of an experiment, SIGTERM then SIGKILL it; returns what was found (and
    whether it is gone)."""
    import psutil

    left = stragglers(pgids, pids, token)
    if not left:
        return []
    procs = []
    for s in left:
        try:
            p = psutil.Process(s["pid"])
            p.terminate()
            procs.append(p)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=min(grace, 2.0))
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(alive, timeout=2.0)
    still = set()
    for p in alive:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                still.add(p.pid)
        except psutil.Error:
            pass
    for s in left:
        s["killed"] = s["pid"] not in still
    return left
