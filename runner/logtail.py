"""Reading a training log after the fact: the real exception, the metrics, and whether a retry helps.

- `error_excerpt()`: the exception lines of the last traceback chain in the log's tail (the cause
  first, the exception that ended the process last), not the name of a regex.
- `classify()`: transient (network trouble, a timeout, a killed process: a retry may help) or not
  (a missing file or module, a config error, a cache miss, CUDA out of memory: it would fail the
  same way again), with the reason in words, by the failure catalogue explain uses (core.failures).
- `extract_metrics()`: the registry's `log_patterns`, last match of each.
"""
from __future__ import annotations

import os
import re
import stat
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from core import failures

TAIL_BYTES = 256 * 1024
METRIC_BYTES = 16 * 1024 * 1024

_TB = "Traceback (most recent call last)"
_CHAIN = ("The above exception was the direct cause", "During handling of the above exception")

def read_end(path: str, max_bytes: int) -> Optional[Tuple[bytes, int]]:
    """(the last `max_bytes` of a regular file, its size), or None. Nothing but a regular file is
    read (a FIFO or device named as a log would block or never end; a link is not followed), and
    never more than asked."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)  # a link planted for the log is not read
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        start = max(0, st.st_size - max_bytes)
        return os.pread(fd, st.st_size - start, start), st.st_size
    except OSError:
        return None
    finally:
        os.close(fd)


def read_tail(path: str, max_bytes: int = TAIL_BYTES) -> List[str]:
    """The last lines of a log (progress-bar carriage returns resolved to what a terminal shows)."""
    got = read_end(path, max_bytes)
    if got is None:
        return []
    data, size = got
    text = data.decode("utf-8", errors="replace")
    lines = [ln.rsplit("\r", 1)[-1] if "\r" in ln else ln for ln in text.split("\n")]
    if size > max_bytes and lines:
        lines = lines[1:]  # the first one is cut
    return lines


def _frame_line(line: str) -> bool:
    return line.startswith((" ", "\t"))


def traceback_chain(lines: Sequence[str]) -> List[List[str]]:
    """The exception text of each traceback in the last chain, cause first, final exception last."""
    blocks: List[Tuple[int, int, List[str]]] = []
    i, n = 0, len(lines)
    while i < n:
        if not lines[i].startswith(_TB):
            i += 1
            continue
        start, j = i, i + 1
        while j < n and (_frame_line(lines[j]) or (not lines[j].strip() and j + 1 < n and _frame_line(lines[j + 1]))):
            j += 1
        # the exception line itself; what follows may be its message's continuation or the next
        # thing the script printed (`echo "Training FAILED"`): only the first line is certain
        exc: List[str] = []
        if j < n and lines[j].strip() and not lines[j].startswith(_TB) and not lines[j].startswith(_CHAIN):
            exc.append(lines[j].rstrip()[:500])
            j += 1
        blocks.append((start, j, exc))
        i = max(j, i + 1)
    if not blocks:
        return []
    chain = [blocks[-1]]
    for prev in reversed(blocks[:-1]):
        between = lines[prev[1]:chain[0][0]]
        if any(ln.startswith(_CHAIN) for ln in between) and all(
                not ln.strip() or ln.startswith(_CHAIN) for ln in between):
            chain.insert(0, prev)
        else:
            break
    return [b[2] for b in chain if b[2]]


_ERRORISH = re.compile(r"(Error|ERROR|Exception|FAILED|Killed|No such file|not found|Traceback|fatal|Fatal)")


def error_excerpt(lines: Sequence[str], limit: int = 12) -> List[str]:
    """The exception lines of the last traceback chain; without a traceback, the error-looking
    lines of the tail (else its last lines)."""
    chain = traceback_chain(lines)
    if chain:
        out = [ln for block in chain for ln in block]
        return out[-limit:]
    tail = [ln.rstrip() for ln in lines[-60:] if ln.strip()]
    errs = [ln for ln in tail if _ERRORISH.search(ln)]
    return (errs or tail)[-min(limit, 5):]


def classify(lines: Sequence[str], exit_code: Optional[int], signal: Optional[str],
             timed_out: bool) -> Tuple[bool, str]:
    """(transient, reason) of a failed attempt, from how it ended and its log's tail.

    The cause comes from the failure catalogue that explain uses (core.failures): the exception
    that ended the process, followed down its chain, else a tool or shell message at the end."""
    if timed_out:
        return True, "timeout"
    chain = failures.find_fatal(lines)
    cid, line = (failures.decisive(chain)[0], chain.fatal.line_text) if chain is not None else (None, "")
    if cid is None and signal:
        return True, f"killed by {signal}"
    if cid is None and chain is None and exit_code in (137, 143):
        return True, f"killed (exit code {exit_code})"
    if cid is None:
        cid, line = failures.cause_of_lines(lines)
    if cid is not None:
        short = failures.rule(cid).short or cid
        return failures.is_transient(cid), f"{short}: {line[:300]}"
    last = line or next((ln for ln in reversed(lines) if ln.strip()), "")
    return False, f"exit code {exit_code}: {last.strip()[:300]}" if last.strip() else f"exit code {exit_code}"


def extract_metrics(path: str, patterns: Mapping[str, str]) -> Dict[str, float]:
    """Each log pattern's last match in the log, as a number (unparseable matches are skipped)."""
    if not patterns:
        return {}
    got = read_end(path, METRIC_BYTES)
    if got is None:
        return {}
    text = got[0].decode("utf-8", errors="replace")
    out: Dict[str, float] = {}
    for name, pattern in patterns.items():
        try:
            matches = re.findall(pattern, text)
        except (re.error, TypeError, RecursionError, OverflowError):
            continue  # core.failures.patterns.invalid_patterns says which and why
        for m in reversed(matches):
            value = m[0] if isinstance(m, tuple) else m
            try:
                out[name] = float(value)
                break
            except (TypeError, ValueError):
                continue
    return out
