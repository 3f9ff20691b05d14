"""One failure catalogue for the runner and explain.

The runner asks it whether a failed attempt is worth retrying (`CauseRule.transient`); explain
asks it for the cause, the chain of events and the fixes. Both recognise causes with the same
rules (`classify_exception` on the exception that ended the process and its chain, `classify_text`
on tool and shell messages), so they cannot disagree about what a log says.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from core.failures.catalogue import classify_exception, classify_text, decisive
from core.failures.causes import BY_ID, IDS, RULES, CauseRule
from core.failures.traceback import Chain, ExceptionRecord, find_fatal


def cause_ids() -> Tuple[str, ...]:
    """Every cause id of the catalogue, in catalogue order."""
    return IDS


def rule(cause_id: str) -> CauseRule:
    """The catalogue entry of a cause id (KeyError for an id that is not in the catalogue)."""
    return BY_ID[cause_id]


def is_transient(cause_id: Optional[str]) -> bool:
    """True when running the experiment again may succeed (network trouble, a kill, a timeout)."""
    return bool(cause_id) and cause_id in BY_ID and BY_ID[cause_id].transient


def cause_of_lines(lines: Sequence[str], tail_lines: int = 80) -> Tuple[Optional[str], str]:
    """(cause id, the line that decides it) for a log's last lines: the fatal exception followed
    down its chain first, else the last tool or shell message the catalogue knows."""
    chain = find_fatal(lines)
    if chain is not None:
        cid, rec = decisive(chain)
        if cid is not None:
            return cid, chain.fatal.line_text
    for ln in reversed(list(lines[-tail_lines:])):
        s = ln.strip()
        if s:
            cid = classify_text(s)
            if cid is not None:
                return cid, s
    if chain is not None:
        return None, chain.fatal.line_text
    return None, ""


__all__ = ["BY_ID", "RULES", "CauseRule", "Chain", "ExceptionRecord", "cause_ids", "cause_of_lines",
           "classify_exception", "classify_text", "decisive", "find_fatal", "is_transient", "rule"]
