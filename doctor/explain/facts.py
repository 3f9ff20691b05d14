"""Small helpers for reading experiment records: typed access, durations, signal names."""
from __future__ import annotations

import os
from typing import Any, List, Optional




SIGNALS = {9: "SIGKILL", 2: "SIGINT", 15: "SIGTERM", 1: "SIGHUP", 6: "SIGABRT", 11: "SIGSEGV"}
INTERRUPT_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


def as_list(x) -> list:
    return x if isinstance(x, list) else []


def as_dict(x) -> dict:
    return x if isinstance(x, dict) else {}


def as_str(x) -> Optional[str]:
    """A recorded string (path, name), or None for anything else."""
    return x if isinstance(x, str) and x else None


def as_num(x) -> Optional[float]:
    try:
        return None if x is None or isinstance(x, bool) else float(x)
    except (TypeError, ValueError):
        return None


def fmt_s(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


_SHELL_CODES = {130: "SIGINT", 137: "SIGKILL", 143: "SIGTERM"}


def signal_name(sig: Any, code: Optional[int], recorded: bool = False) -> str:
    """The signal that ended a process: the recorded one, a negative exit code (subprocess), or
    (when no signal was recorded at all) a shell's 128+N code."""
    if isinstance(sig, str) and sig:
        return sig if sig.startswith("SIG") else "SIG" + sig
    if isinstance(sig, int):
        return SIGNALS.get(sig, f"signal {sig}")
    if code is not None:
        if code < 0:
            return SIGNALS.get(-code, f"signal {-code}")
        if not recorded:
            return _SHELL_CODES.get(code, "")
    return ""


def shorten(text: str, n: int = 110) -> str:
    return text if len(text) <= n else text[:n].rstrip() + "…"


def clean_msg(line: str) -> str:
    """A tool message without its decoration (perf's `\\___` pointer, bullets)."""
    return line.strip().lstrip("\\_-*> ").strip()


def signal_text(sig: str, code: Optional[int]) -> str:
    if sig and code is not None:
        return f"{sig} (exit code {code})"
    return sig or (f"exit code {code}" if code is not None else "a signal")



def traceback_location(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}" if tb else "?"


def listdir(d: str) -> List[str]:
    try:
        return os.listdir(d)
    except OSError:
        return []


