"""The backend seam: how a job is started, waited for, stopped and cleaned up.

A backend runs one command (argv, cwd, environment) somewhere: as a local process group, or as
a cluster job. The batch never touches processes itself; it drives a backend through this small
interface, so the attempt loop (timeouts, stop requests, retries, the parallel mode's background
job, records) is the same whatever runs the job:

- `Backend.start(spec)` starts the job and returns its `Handle`, or raises `StartError` when the
  job cannot be started at all (missing script, permission denied, scheduler refused it).
- `Handle.wait(seconds)` waits up to `seconds` for the job to end, meanwhile writing its output to
  `spec.log_path` (and to the stream given to `start`); it returns the `Exit` once the job has
  ended and its output is in the log, else None. `wait(0)` is a non-blocking poll.
- `Handle.terminate()` asks the job to stop (SIGTERM to its process group, `scancel --signal=TERM`);
  `Handle.kill()` stops it hard. The caller sends `kill()` after its grace period.
- `Handle.cleanup()` finds what is left of the job after it ended (processes that escaped its
  group, a job step still listed) and stops it; it returns one dict per leftover
  (`pid`, `cmdline`, `killed`), which the batch records as stragglers.
- `Handle.record()` is what the batch stores about the job in the attempt's record.
- `Backend.sweep(tokens)` stops the leftovers of an earlier runner that died (used by --resume):
  every job carries `TOKEN_VAR=<run>/<experiment>` in its environment.
- `Backend.same_machine`: the job runs on this machine (GPU checks before an experiment apply).
- `Backend.close()` at the end of the batch.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import IO, List, Mapping, Optional, Sequence, Tuple

TOKEN_VAR = "MUTATION_RUN_ID"  # every job's environment: TOKEN_VAR=<run>/<experiment>[/background]


@dataclass(frozen=True)
class JobSpec:
    """One job to run: the command, where, with which environment, where its output goes.

    `append`: the log is appended to, and nothing is streamed (the parallel mode's background job,
    restarted into the same log); else the log is created afresh for this attempt.
    `token`: the run token (`<run>/<experiment>`), also present in `env`, that marks the job's
    processes; `grace`: seconds between `terminate()` and `kill()` the caller will allow."""

    argv: Tuple[str, ...]
    cwd: str
    env: Mapping[str, str] = field(default_factory=dict)
    log_path: str = ""
    token: str = ""
    append: bool = False
    grace: float = 10.0


@dataclass(frozen=True)
class Exit:
    """How a job ended: its exit code, or the name of the signal that ended it."""

    exit_code: Optional[int]
    signal: Optional[str] = None


class StartError(Exception):
    """The job could not be started; `exit_code` is what a shell would have returned (127, 126)."""

    def __init__(self, message: str, exit_code: int = 126):
        super().__init__(message)
        self.message, self.exit_code = message, exit_code


class Handle(abc.ABC):
    """A started job."""

    @abc.abstractmethod
    def wait(self, seconds: float) -> Optional[Exit]:
        """Wait up to `seconds`, moving output to the log; the Exit once the job ended, else None."""

    @abc.abstractmethod
    def terminate(self) -> None:
        """Ask the job and everything it started to stop (graceful)."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Stop the job and everything it started now."""

    @abc.abstractmethod
    def cleanup(self) -> List[dict]:
        """After the end: stop what is left of the job; one dict per leftover (pid, cmdline, killed)."""

    def record(self) -> dict:
        """What the attempt's record keeps about this job (backend name, pid or job id)."""
        return {}


class Backend(abc.ABC):
    """A way of running jobs. Subclasses set `name` and implement `start`."""

    name = ""
    same_machine = True

    @abc.abstractmethod
    def start(self, spec: JobSpec, stream: Optional[IO[bytes]] = None) -> Handle:
        """Start the job; raises StartError when it cannot start."""

    def sweep(self, tokens: Sequence[str], grace: float = 2.0) -> List[dict]:
        """Stop the leftovers of an earlier runner's jobs carrying one of `tokens`."""
        return []

    def close(self) -> None:
        """The batch is over (or was stopped): release what the backend holds."""
