"""The local backend's watchdog: when the runner dies (even by `kill -9`), its jobs die with it.

Started by the runner in a session of its own, it reads lines from a pipe only the runner holds:
`job <pgid> <start ticks> <grace> <token>` when a job starts, `done <pgid>` when it has ended,
`bye` when the runner ends normally. End of file without `bye` means the runner is gone: every
job still listed is stopped (SIGTERM to its process group and to every process carrying its run
token, SIGKILL after the grace period), then the watchdog exits.

    python -m runner.backends.watchdog
"""
from __future__ import annotations

import signal
import sys
from typing import Dict, Tuple


def serve(lines) -> Dict[int, Tuple[int, float, str]]:
    """Follow the runner's lines; the jobs left when it stopped talking ({} after `bye`)."""
    jobs: Dict[int, Tuple[int, float, str]] = {}
    for line in lines:
        words = line.rstrip("\n").split(" ", 4)
        if words[0] == "bye":
            return {}
        try:
            if words[0] == "job" and len(words) == 5:
                jobs[int(words[1])] = (int(words[2]), float(words[3]), words[4])
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
    kill_stragglers(set(jobs), set(), [t for _b, _g, t in jobs.values() if t], grace=grace, born_after=born)


def main() -> int:
    for s in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(s, signal.SIG_IGN)  # only the end of the runner's pipe ends the watchdog
    stop_all(serve(sys.stdin))
    return 0


if __name__ == "__main__":
    sys.exit(main())
