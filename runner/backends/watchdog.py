"""The local backend's watchdog: when the runner dies (even by `kill -9`), its jobs die with it.

Started by the runner in a session of its own, it reads lines from a pipe only the runner holds:
`want <start ticks> <grace> <token>` just before a job is started (so a runner killed between
the start and the next line still has its job stopped, by its run token), `job <pgid> <start ticks>
<grace> <token>` once it runs, `drop <token>` when it could not start, `done <pgid>` when it has
ended, `bye` when the runner ends normally. End of file without `bye` means the runner is gone: every
job still listed is stopped (SIGTERM to its process group and to every process carrying its run
token, SIGKILL after the grace period), then the watchdog exits.

    python -m runner.backends.watchdog
"""
from __future__ import annotations

import signal
import sys
from typing import Dict, Tuple


def serve(lines) -> Dict[int, Tuple[int, float, str]]:
    """Follow the runner's lines; the jobs left when it stopped talking ({} after `bye`). A job
    announced (`want`) but not yet confirmed is keyed by a negative number: no process group."""
    jobs: Dict[int, Tuple[int, float, str]] = {}
    wanted: Dict[str, int] = {}
    for n, line in enumerate(lines):
        words = line.rstrip("\n").split(" ", {"want": 3, "drop": 1}.get(line.split(" ", 1)[0], 4))
        if words[0] == "bye":
            return {}
        try:
            if words[0] == "want" and len(words) == 4:
                jobs.pop(wanted.pop(words[3], 0), None)
                wanted[words[3]] = -1 - n
                jobs[-1 - n] = (int(words[1]), float(words[2]), words[3])
            elif words[0] == "job" and len(words) == 5:
                jobs.pop(wanted.pop(words[4], 0), None)
                jobs[int(words[1])] = (int(words[2]), float(words[3]), words[4])
            elif words[0] == "drop" and len(words) == 2:
                jobs.pop(wanted.pop(words[1], 0), None)
            elif words[0] == "done" and len(words) == 2:
                jobs.pop(int(words[1]), None)
        except ValueError:
            continue
    return jobs


def stop_all(jobs: Dict[int, Tuple[int, float, str]]) -> None:
    from runner.backends.local import kill_stragglers

    if not jobs:
        return
    born = min(b for b, _g, _t in jobs.values())
    grace = max(g for _b, g, _t in jobs.values())
    kill_stragglers({p for p in jobs if p > 0}, set(), [t for _b, _g, t in jobs.values() if t], grace=grace, born_after=born)


def main() -> int:
    for s in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(s, signal.SIG_IGN)  # only the end of the runner's pipe ends the watchdog
    stop_all(serve(sys.stdin))
    return 0


if __name__ == "__main__":
    sys.exit(main())
