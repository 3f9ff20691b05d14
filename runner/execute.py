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
from typing import IO, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set

TOKEN_VAR = "MUTATION_RUN_ID"
POLL = 0.25  # seconds between checks of timeout / Ctrl-C / background while a child is quiet
DESCENDANT_SCAN = 2.0  # seconds between snapshots of a child's descendants
COALESCE = 0.02  # after a short read, wait this long so output is handled in batches (<= 50 wake-ups/s)


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
    """How one process run ended."""

    started: str
    duration: float
    exit_code: Optional[int]
    signal: Optional[str]
    timed_out: bool = False
    interrupted: bool = False
    pid: int = 0
    start_error: str = ""
    descendants: Set[tuple] = field(default_factory=set)
    stragglers: List[dict] = field(default_factory=list)


def _killpg(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _descendants(pid: int) -> Set[tuple]:
    """(pid, start time) of every descendant of `pid` now; the start time guards against pid reuse."""
    try:
        import psutil

        kids = [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except Exception:  # noqa: BLE001 - the process may be gone; nothing to record
        return set()
    out = set()
    for k in kids:
        st = _proc_stat(k)
        if st is not None:
            out.add((k, st[2]))
    return out


def _pidfd(pid: int) -> List[int]:
    """[a pidfd of `pid`] where the kernel has them (Linux 5.3+), else []."""
    try:
        return [os.pidfd_open(pid)]
    except (AttributeError, OSError):
        return []


def _wait_exit(proc: subprocess.Popen, exit_fd: List[int], timeout: float) -> None:
    """Sleep up to `timeout`, waking at once when the process exits."""
    if exit_fd:
        select.select(exit_fd, [], [], timeout)
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass


def start(argv: Sequence[str], cwd: str, env: Mapping[str, str], stdout) -> subprocess.Popen:
    return subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=stdout,
                            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)


def run_attempt(argv: Sequence[str], cwd: str, env: Mapping[str, str], log_path: str, *,
                timeout: Optional[float], grace: float, stop: StopRequest,
                stream: Optional[IO[bytes]] = None, tick: Optional[Callable[[], None]] = None,
                token: Optional[str] = None) -> AttemptResult:
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
        exit_fd = _pidfd(proc.pid)  # readable when the child exits: no polling for its end
        born = (_proc_stat(proc.pid) or ("", 0, 0))[2]  # nothing of this attempt is older
        pgid = proc.pid
        deadline = t0 + timeout if timeout else None
        kill_at: Optional[float] = None
        timed_out = interrupted = False
        eof = False
        exited_at: Optional[float] = None
        descendants: Set[tuple] = set()
        next_scan = t0 + 0.5
        while True:
            if not eof:
                try:
                    ready, _, _ = select.select([fd] + (exit_fd if exited_at is None else []), [], [], POLL)
                    ready = [r for r in ready if r == fd]
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
                        if len(data) < (1 << 15):
                            # a chatty job: gather its lines instead of waking up for each one
                            # (returns at once when the job ends)
                            _wait_exit(proc, exit_fd, COALESCE)
            else:
                _wait_exit(proc, exit_fd, POLL)
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
        duration = time.monotonic() - t0
        for f in exit_fd:
            os.close(f)
        # anything of this attempt still alive once the leader ended (in its group, a recorded
        # descendant, or carrying its token after escaping with setsid) is stopped and reported
        strays = kill_stragglers({pgid}, descendants, [token] if token else (), grace=grace, born_after=born)
        proc.stdout.close()
        return AttemptResult(started_iso, duration, exit_code=rc if rc >= 0 else None,
                             signal=signal_name(-rc) if rc < 0 else None, timed_out=timed_out,
                             interrupted=interrupted, pid=proc.pid, descendants=descendants, stragglers=strays)
    finally:
        log.close()


class Background:
    """A parallel experiment's background job: started first, restarted whenever it exits while
    the foreground runs (with a back-off when it keeps failing fast), stopped by group at the end."""

    MIN_UPTIME = 2.0  # a job that ends sooner is failing fast: wait before restarting it, longer each time
    FIRST_BACKOFF = 0.25
    MAX_BACKOFF = 30.0

    def __init__(self, argv: Sequence[str], cwd: str, env: Mapping[str, str], log_path: str, grace: float):
        self.argv, self.cwd, self.env, self.log_path, self.grace = list(argv), cwd, dict(env), log_path, grace
        self.proc: Optional[subprocess.Popen] = None
        self.log = None
        self.starts = 0
        self.exits: List[dict] = []
        self.pgids: Set[int] = set()
        self.descendants: Set[tuple] = set()
        self.start_error = ""
        self.born = 0
        self._started_at = 0.0
        self._restart_at: Optional[float] = None
        self._backoff = self.FIRST_BACKOFF
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
        self.pgids = {self.proc.pid}  # earlier groups were killed when their leader ended
        if not self.born:
            self.born = (_proc_stat(self.proc.pid) or ("", 0, 0))[2]  # nothing of the job is older
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
            self._record_exit(self.proc.returncode)
            _killpg(self.proc.pid, signal.SIGKILL)  # leftovers of the finished job
            self.proc = None
            if now - self._started_at < self.MIN_UPTIME:
                self._restart_at = now + self._backoff
                self._backoff = min(self._backoff * 2, self.MAX_BACKOFF)
            else:
                self._restart_at = now
                self._backoff = self.FIRST_BACKOFF
        if self._restart_at is not None and now >= self._restart_at:
            self.start()

    def _record_exit(self, rc: int, **more) -> None:
        self.exits.append({"exit_code": rc if rc >= 0 else None, "signal": signal_name(-rc) if rc < 0 else None,
                           "seconds": round(time.monotonic() - self._started_at, 3), **more})

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL after the grace period; every group it ever had is killed."""
        if self.proc is not None and self.proc.poll() is None:
            self.descendants |= _descendants(self.proc.pid)
            _killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.grace)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None:
            _killpg(self.proc.pid, signal.SIGKILL)
            try:
                self._record_exit(self.proc.wait(timeout=5), stopped=True)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
                pass
            self.proc = None
        if self.log is not None:
            self.log.write(f"=== background stopped at {now_iso()} after {self.starts} start(s)\n".encode())
            self.log.close()
            self.log = None


def _proc_stat(pid: int):
    """(state, pgid, start time in clock ticks) from /proc/<pid>/stat, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rfind(b")") + 2:].split()
    try:
        return rest[0].decode(), int(rest[2]), int(rest[19])
    except (IndexError, ValueError):
        return None


def _has_token(pid: int, needles: Sequence[bytes]) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = b"\0" + f.read()
    except OSError:
        return False
    return any(n in env for n in needles)


def stragglers(pgids: Set[int], pids: Set[tuple], tokens: Iterable[str] = (), born_after: int = 0) -> List[dict]:
    """Processes of an experiment still alive: in one of its process groups, recorded as a
    descendant, or carrying one of its run tokens in the environment. Zombies are dead and not
    reported. `born_after`: start time (clock ticks since boot, as in /proc/<pid>/stat) before
    which no process can belong to the experiment. Reads /proc directly (a few ms for hundreds of
    processes)."""
    needles = [b"\0" + f"{TOKEN_VAR}={t}".encode() + b"\0" for t in tokens if t]
    me = os.getpid()
    out = []
    try:
        entries = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:  # pragma: no cover - Linux only
        entries = []
    for pid in entries:
        if pid == me:
            continue
        st = _proc_stat(pid)
        if st is None or st[0] in ("Z", "X") or st[2] < born_after:
            continue
        if (pid, st[2]) in pids or st[1] in pgids or (needles and _has_token(pid, needles)):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:300]
            except OSError:
                cmd = ""
            out.append({"pid": pid, "cmdline": cmd})
    return out


def _wait_gone(pids: Iterable[int], timeout: float) -> Set[int]:
    """Wait until the processes are gone (or zombies); returns those still alive."""
    left = set(pids)
    end = time.monotonic() + timeout
    while left:
        left = {p for p in left if (_proc_stat(p) or ("X",))[0] not in ("Z", "X")}
        if not left or time.monotonic() >= end:
            break
        time.sleep(0.02)
    return left


def _signal_pids(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill_stragglers(pgids: Set[int], pids: Set[tuple], tokens: Iterable[str] = (), grace: float = 2.0,
                    born_after: int = 0) -> List[dict]:
    """Find what is left of an experiment, SIGTERM then SIGKILL it (after `grace`, at most 2 s);
    returns what was found, each with `killed` (gone afterwards)."""
    left = stragglers(pgids, pids, tokens, born_after)
    if not left:
        return []
    found = [s["pid"] for s in left]
    _signal_pids(found, signal.SIGTERM)
    alive = _wait_gone(found, min(grace, 2.0))
    if alive:
        _signal_pids(alive, signal.SIGKILL)
        alive = _wait_gone(alive, 2.0)
    for s in left:
        s["killed"] = s["pid"] not in alive
    return left
