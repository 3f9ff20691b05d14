"""The local backend: each job is a process group on this machine.

Every child gets its own session (`start_new_session=True`), so its process group holds it and
every descendant that does not escape on purpose; stopping a job signals the whole group. Output
(stdout and stderr merged, in order) is written to the attempt's log and streamed to the terminal.
After a job ends, `cleanup()` finds what is still alive (same process group, recorded
descendants, or the run token in the environment, which survives `setsid` and double forks) and
kills it.

Jobs die with the runner, even after a `kill -9`: the child asks the kernel for SIGTERM when its
parent dies (PR_SET_PDEATHSIG, set between fork and exec; dropped by the kernel when the child
executes a set-user-id program such as sudo), and a watchdog process (runner/backends/watchdog.py)
that holds the other end of a pipe from the runner stops every job's process group and every
process carrying its run token when that pipe closes without a goodbye.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Iterable, List, Optional, Sequence, Set

from core.safefs import open_log
from runner.backends.base import TOKEN_VAR, Backend, Exit, Handle, JobSpec, StartError

DESCENDANT_SCAN = 2.0  # seconds between snapshots of a child's descendants
COALESCE = 0.02  # after a short read, wait this long so output is handled in batches (<= 50 wake-ups/s)
DRAIN = 0.5  # after the leader exits, wait this long for its output to end (a descendant may hold the pipe)


def signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"SIG{num}"


PR_SET_PDEATHSIG = 1
_LIBC = None


def _prctl():
    """libc's prctl, loaded in the runner (never first in a forked child), or None."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            _LIBC = False
    return _LIBC or None


class LocalBackend(Backend):
    """Jobs as local process groups, tied to the runner's life (see the module's docstring)."""

    name = "local"
    same_machine = True

    def __init__(self, watchdog: bool = True):
        self.use_watchdog = watchdog
        self.watchdog: Optional[subprocess.Popen] = None

    def _watch(self, line: str) -> None:
        """Tell the watchdog (started on first use) about a job; a dead watchdog is not fatal."""
        if not self.use_watchdog:
            return
        if self.watchdog is None:
            root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
            try:
                self.watchdog = subprocess.Popen([sys.executable, "-m", "runner.backends.watchdog"], stdin=subprocess.PIPE,
                                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root, env=env,
                                                 start_new_session=True, close_fds=True, text=True)
            except OSError:
                self.use_watchdog = False
                return
        try:
            self.watchdog.stdin.write(line + "\n")
            self.watchdog.stdin.flush()
        except (OSError, ValueError):
            self.use_watchdog = False

    def close(self) -> None:
        if self.watchdog is not None:
            self._watch("bye")
            try:
                self.watchdog.stdin.close()
                self.watchdog.wait(timeout=5)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
            self.watchdog = None

    def start(self, spec: JobSpec, stream: Optional[IO[bytes]] = None) -> "LocalHandle":
        try:  # never through a link planted in the experiment folder; appends only to our own log
            log = open_log(spec.log_path, append=spec.append)
        except OSError as e:
            raise StartError(f"not started: {e.strerror or e}", 126) from None
        token = spec.token.replace("\n", " ")
        if token:  # announced first: a runner killed before the `job` line still has this job stopped
            self._watch(f"want {(_proc_stat(os.getpid()) or ('', 0, 0))[2]} {spec.grace:g} {token}")
        try:
            proc = subprocess.Popen(list(spec.argv), cwd=spec.cwd, env=dict(spec.env), stdin=subprocess.DEVNULL,
                                    stdout=log if spec.append else subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True, preexec_fn=self._child_setup())
        except OSError as e:
            log.close()
            if token:
                self._watch(f"drop {token}")
            raise StartError(f"cannot start {spec.argv[0]!r} in {spec.cwd}: {e.strerror or e}",
                             127 if isinstance(e, FileNotFoundError) else 126) from None
        if spec.append:
            log.close()  # the child has its own copy of the descriptor
            log = None
        handle = LocalHandle(spec, proc, log, stream, self)
        self._watch(f"job {handle.pgid} {handle.born} {spec.grace:g} {token}")
        return handle

    def _child_setup(self):
        """Between fork and exec: SIGTERM to the child when the runner dies. The kernel ties this
        to the thread that forked, so it is only asked for from the main thread (which lives as
        long as the runner); the watchdog covers the rest."""
        prctl = _prctl()
        if prctl is None or threading.current_thread() is not threading.main_thread():
            return None
        parent = os.getpid()

        def die_with_parent():
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            if os.getppid() != parent:  # the runner died before the request was made
                os._exit(1)
        return die_with_parent

    def sweep(self, tokens: Sequence[str], grace: float = 2.0) -> List[dict]:
        return kill_stragglers(set(), set(), tokens, grace=grace)


class LocalHandle(Handle):
    """A started local process group; reads its output while waiting."""

    def __init__(self, spec: JobSpec, proc: subprocess.Popen, log: Optional[IO[bytes]], stream: Optional[IO[bytes]],
                 backend: Optional[LocalBackend] = None):
        self.spec, self.proc, self.log, self.stream, self.backend = spec, proc, log, stream, backend
        self.pgid = proc.pid
        self.exit_fd = _pidfd(proc.pid)  # readable when the child exits: no polling for its end
        self.born = (_proc_stat(proc.pid) or ("", 0, 0))[2]  # nothing of this job is older
        self.fd: Optional[int] = None
        if proc.stdout is not None:
            self.fd = proc.stdout.fileno()
            os.set_blocking(self.fd, False)
        self.eof = self.fd is None
        self.exited_at: Optional[float] = None
        self.descendants: Set[tuple] = set()
        self.next_scan = time.monotonic() + 0.5
        self.result: Optional[Exit] = None

    def wait(self, seconds: float) -> Optional[Exit]:
        if self.result is not None:
            return self.result
        end = time.monotonic() + seconds
        while True:
            self._pump(max(0.0, end - time.monotonic()))
            now = time.monotonic()
            if self.proc.poll() is not None:
                if self.exited_at is None:
                    self.exited_at = now
                    self.descendants |= _descendants(self.proc.pid)
                # the leader is gone: finish when its output ends, or shortly after if a
                # descendant still holds the pipe open (it is a straggler, dealt with by cleanup)
                if self.eof or now - self.exited_at > DRAIN:
                    return self._finish()
            elif now >= self.next_scan:
                self.descendants |= _descendants(self.proc.pid)
                self.next_scan = now + DESCENDANT_SCAN
            if now >= end:
                return None

    def _pump(self, timeout: float) -> None:
        """Move what the child wrote to the log and the stream, waiting up to `timeout` for it."""
        if self.eof:
            self._wait_exit(timeout)
            return
        fds = [self.fd] + (self.exit_fd if self.exited_at is None else [])
        try:
            ready = select.select(fds, [], [], timeout)[0]
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for safety
            return
        if self.fd not in ready:
            return
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        if data == b"":
            self.eof = True
            return
        self.log.write(data)
        if self.stream is not None:
            try:
                self.stream.write(data)
                self.stream.flush()
            except (OSError, ValueError):
                self.stream = None
        if len(data) < (1 << 15):
            # a chatty job: gather its lines instead of waking up for each one (returns at once when it ends)
            self._wait_exit(COALESCE)

    def _wait_exit(self, timeout: float) -> None:
        """Sleep up to `timeout`, waking at once when the process exits."""
        if self.exit_fd:
            select.select(self.exit_fd, [], [], timeout)
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass

    def _finish(self) -> Exit:
        rc = self.proc.wait()
        for f in self.exit_fd:
            os.close(f)
        self.exit_fd = []
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.log is not None:
            self.log.close()
            self.log = None
        self.result = Exit(rc if rc >= 0 else None, signal_name(-rc) if rc < 0 else None)
        return self.result

    def terminate(self) -> None:
        if self.result is None and self.exited_at is None:
            self.descendants |= _descendants(self.proc.pid)
        _killpg(self.pgid, signal.SIGTERM)

    def kill(self) -> None:
        _killpg(self.pgid, signal.SIGKILL)
        if self.result is not None:
            self._unwatch()  # the leader had ended: its whole group is gone now

    def cleanup(self) -> List[dict]:
        # anything of this job still alive once the leader ended (in its group, a recorded
        # descendant, or carrying its token after escaping with setsid) is stopped and reported
        left = kill_stragglers({self.pgid}, self.descendants, [self.spec.token] if self.spec.token else (),
                               grace=self.spec.grace, born_after=self.born)
        self._unwatch()
        return left

    def _unwatch(self) -> None:
        if self.backend is not None:
            self.backend._watch(f"done {self.pgid}")

    def record(self) -> dict:
        return {"backend": "local", "pid": self.proc.pid}


# -- processes, read from /proc ---------------------------------------------------------------------
def _killpg(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _pidfd(pid: int) -> List[int]:
    """[a pidfd of `pid`] where the kernel has them (Linux 5.3+), else []."""
    try:
        return [os.pidfd_open(pid)]
    except (AttributeError, OSError):
        return []


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
