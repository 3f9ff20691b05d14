"""Reading a training log after the fact: the real exception, the metrics, and whether a retry helps.

- `error_excerpt()`: the exception lines of the last traceback chain in the log's tail (the cause
  first, the exception that ended the process last), not the name of a regex.
- `classify()`: transient (network trouble, a timeout, a killed process: a retry may help) or not
  (a missing file or module, a config error, a cache miss, CUDA out of memory: it would fail the
  same way again), with the reason in words.
- `extract_metrics()`: the registry's `log_patterns`, last match of each.
"""
from __future__ import annotations

import os
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

TAIL_BYTES = 256 * 1024
METRIC_BYTES = 16 * 1024 * 1024

_TB = "Traceback (most recent call last)"
_CHAIN = ("The above exception was the direct cause", "During handling of the above exception")

# Checked first: a retry cannot help (checked on the exception that ended the process, then on the
# rest of its chain, then on the tail).
NOT_TRANSIENT: Tuple[Tuple[str, str], ...] = (
    (r"LocalEntryNotFoundError|OfflineModeIsEnabled|cannot find the requested files in the local cache",
     "weights not in the cache the process used (a cache miss; retrying fails the same way)"),
    (r"CERTIFICATE_VERIFY_FAILED|SSLCertVerificationError|certificate verify failed",
     "TLS certificate rejected (proxy or CA configuration)"),
    (r"(Repository|Revision|Entry|RemoteEntry)NotFoundError|GatedRepoError|401 Client Error|404 Client Error",
     "the Hub does not have that file or repository"),
    (r"ModuleNotFoundError|ImportError|No module named", "a Python module is missing"),
    (r"FileNotFoundError|No such file or directory|NotADirectoryError|IsADirectoryError", "a file or folder is missing"),
    (r"PermissionError|Permission denied|Operation not permitted", "permission denied"),
    (r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED", "CUDA out of memory"),
    (r"no kernel image is available|CUDA error: invalid device|Torch not compiled with CUDA",
     "the interpreter's torch does not support this GPU"),
    (r"unrecognized arguments|error: argument|invalid choice|the following arguments are required",
     "the train script rejected its arguments (config error)"),
    (r"\b(KeyError|ValueError|TypeError|AttributeError|NameError|SyntaxError|IndentationError|AssertionError|"
     r"IndexError|ZeroDivisionError|NotImplementedError)\b", "an error in the code or its configuration"),
    (r"Python not found|command not found|conda env.* not found|EnvironmentLocationNotFound",
     "the interpreter or environment is missing"),
)
TRANSIENT: Tuple[Tuple[str, str], ...] = (
    (r"ConnectTimeout|ReadTimeout|WriteTimeout|PoolTimeout|TimeoutException|handshake operation timed out|"
     r"Read timed out|timed out", "network timeout"),
    (r"Connection reset by peer|ConnectionResetError|Connection aborted|RemoteDisconnected|IncompleteRead|"
     r"ChunkedEncodingError|RemoteProtocolError|BrokenPipeError", "network connection dropped"),
    (r"ConnectError|ConnectionError|Connection refused|ConnectionRefusedError|NewConnectionError|"
     r"Temporary failure in name resolution|Name or service not known|Network is unreachable|URLError|"
     r"MaxRetryError|ProxyError", "network error"),
    (r"HTTP Error 5\d\d|50[234] Server Error|Service Unavailable|Bad Gateway|Gateway Time-?out",
     "server error (5xx)"),
    (r"^Killed$|\bKilled\b.*signal|oom-kill", "killed (out-of-memory killer?)"),
)


def read_tail(path: str, max_bytes: int = TAIL_BYTES) -> List[str]:
    """The last lines of a log (progress-bar carriage returns resolved to what a terminal shows)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return []
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


def _match(table, text: str) -> Optional[str]:
    for pattern, reason in table:
        if re.search(pattern, text, re.MULTILINE):
            return reason
    return None


def classify(lines: Sequence[str], exit_code: Optional[int], signal: Optional[str],
             timed_out: bool) -> Tuple[bool, str]:
    """(transient, reason) of a failed attempt, from how it ended and its log's tail."""
    if timed_out:
        return True, "timeout"
    chain = traceback_chain(lines)
    final = "\n".join(chain[-1]) if chain else ""
    rest = "\n".join(ln for block in chain[:-1] for ln in block)
    tail = "\n".join(ln for ln in lines[-80:])
    for text in (final, rest):
        if not text:
            continue
        reason = _match(NOT_TRANSIENT, text)
        if reason:
            return False, f"{reason}: {(chain[-1][0] if chain else text.splitlines()[0])[:300]}"
        reason = _match(TRANSIENT, text)
        if reason:
            return True, f"{reason}: {(chain[-1][0] if chain else text.splitlines()[0])[:300]}"
    if signal:
        return True, f"killed by {signal}"
    if exit_code in (137, 143) and not chain:
        return True, f"killed (exit code {exit_code})"
    if not chain:
        reason = _match(NOT_TRANSIENT, tail)
        if reason:
            return False, reason
        reason = _match(TRANSIENT, tail)
        if reason:
            return True, reason
    last = chain[-1][0] if chain else next((ln for ln in reversed(lines) if ln.strip()), "")
    return False, f"exit code {exit_code}: {last.strip()[:300]}" if last.strip() else f"exit code {exit_code}"


def extract_metrics(path: str, patterns: Mapping[str, str]) -> Dict[str, float]:
    """Each log pattern's last match in the log, as a number (unparseable matches are skipped)."""
    if not patterns:
        return {}
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - METRIC_BYTES))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return {}
    out: Dict[str, float] = {}
    for name, pattern in patterns.items():
        try:
            matches = re.findall(pattern, text)
        except re.error:
            continue
        for m in reversed(matches):
            value = m[0] if isinstance(m, tuple) else m
            try:
                out[name] = float(value)
                break
            except (TypeError, ValueError):
                continue
    return out
