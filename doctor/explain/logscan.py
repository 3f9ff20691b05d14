"""One log read from its end for explain: the window, the fatal exception chain, the exit-code line,
the lines that say a run trained nothing, and the cause a tool or shell message names."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

from core.failures import catalogue as cat
from core.failures.traceback import Chain, find_fatal
from core.safefs import read_regular
from doctor.explain.model import Evidence
from doctor.explain.readers import FIRST_BLOCK, Tail, clean_line

TB_MARK = "Traceback (most recent call last)"
TB_MARK_B = TB_MARK.encode()
_EXIT_B = b"exit code"
_EXIT_LINE = re.compile(rb"exit code[:\s]+(-?\d+)")
# Cheap byte tests (case-insensitive enough) before the suspicious-text regex runs.
_SUSPECT_KEYS = (b"mplemented", b"kipping training", b"o training", b"othing to train", b"ry run", b"ry-run")
_SUSPECT_TEXT = re.compile(r"not (?:yet )?implemented|NotImplementedError|skipping training|"
                           r"no training (?:was )?(?:performed|done)|nothing to train|\bdry[- ]run\b|"
                           r"TODO: train", re.I)
SUSPECT_WINDOW = 4 * 1024  # "not yet implemented" and the like: searched in the last 4 KiB
@dataclass
class LogScan:
    """One log read from its end: the window, the fatal chain (if any), the exit code line."""

    name: str
    path: str
    tail: Tail
    chain: Optional[Chain] = None
    exit_code: Optional[int] = None
    exit_pos: Optional[int] = None
    exit_line: str = ""

    @property
    def exit_index(self) -> Optional[int]:
        return None if self.exit_pos is None else self.tail.index_of(self.exit_pos)

    def where(self, index: int) -> str:
        """`file:line`, plus the section for terminal_output.txt (its STDERR part follows STDOUT)."""
        loc = f"{self.name}:{self.tail.line_number(index)}"
        if self.name.endswith("terminal_output.txt"):
            pos = self.tail.data.rfind(b"\nSTDERR:\n")
            if pos >= 0:
                loc += " (STDERR section)" if index > self.tail.index_of(pos) else " (STDOUT section)"
        return loc

    def ev(self, index, text: Optional[str] = None, count: bool = True) -> Evidence:
        """Evidence for lines[index]; `index` may be a callable giving it (computed only if needed)."""
        if not count and not self.tail.at_file_start and text is not None:
            return Evidence(self.name, None, text)
        if callable(index):
            index = index()
        return Evidence(self.name, self.tail.line_number(index, count),
                        text if text is not None else self.tail.line(index))


_PLAIN = re.compile(r"[\w.-]+\Z")


def inside(folder: str, name: str) -> Optional[str]:
    """The path of `name` (as a record names it) when it resolves inside the experiment folder,
    else None: a record saying `"log": "/etc/shadow"` or a link that leaves the folder is not read,
    whatever the record says."""
    if not isinstance(name, str) or not name or "\0" in name:
        return None
    if _PLAIN.match(name) and name not in (".", ".."):
        # A plain file name: the folder itself was found without following links, and the file is
        # opened with O_NOFOLLOW, so a link planted in its place is refused there.
        return os.path.join(folder, name)
    base = os.path.realpath(folder)
    real = os.path.realpath(os.path.join(folder, name))
    return real if real.startswith(base + os.sep) else None


def read_head(folder: str, name: str, n: int) -> bytes:
    """The first `n` bytes of a regular file inside the experiment folder (b"" otherwise)."""
    path = inside(folder, name)
    try:
        return read_regular(path, n, follow=False) if path else b""
    except OSError:
        return b""


def scan_log(folder: str, name: str, want_chain: bool, cap: int, first: int = FIRST_BLOCK) -> Optional[LogScan]:
    path = inside(folder, name)
    tail = Tail.open(path, first=first, cap=cap) if path else None
    if tail is None:
        return None
    if not path.startswith(folder + os.sep):
        path = os.path.join(folder, path[len(os.path.realpath(folder)) + 1:])
    rel = path[len(folder) + 1:]
    scan = LogScan(rel, path, tail)
    if want_chain:
        while True:
            if TB_MARK_B in tail.data:
                ch = find_fatal(tail.lines)
                if ch is not None and (not ch.truncated or tail.at_file_start):
                    scan.chain = ch
                    break
            if not tail.grow():
                if TB_MARK_B in tail.data:
                    scan.chain = find_fatal(tail.lines)
                break
    elif TB_MARK_B in tail.data:
        scan.chain = find_fatal(tail.lines)
    data = tail.data
    at = data.rfind(_EXIT_B)
    while at >= 0:
        m = _EXIT_LINE.match(data, at)
        if m:
            scan.exit_code = int(m.group(1))
            scan.exit_pos = at
            start = data.rfind(b"\n", 0, at) + 1
            end = data.find(b"\n", at)
            scan.exit_line = clean_line(data[start:end if end >= 0 else len(data)].decode("utf-8", "replace"))
            break
        at = data.rfind(_EXIT_B, 0, at)
    return scan


def suspect_line(scan: "LogScan") -> Optional[int]:
    """Index of the last line that says the run did not really train ("not yet implemented")."""
    data = scan.tail.data
    base = max(0, len(data) - SUSPECT_WINDOW)
    if base:
        base = data.find(b"\n", base) + 1
    near_end = data[base:]
    if not any(k in near_end for k in _SUSPECT_KEYS):
        return None
    text = near_end.decode("utf-8", "replace")
    m = None
    for m in _SUSPECT_TEXT.finditer(text):
        pass
    return None if m is None else scan.tail.index_of(base) + text.count("\n", 0, m.start())


def last_lines(scan: LogScan, n: int = 40) -> List[Tuple[int, str]]:
    out = []
    for i, ln in scan.tail.iter_back():
        s = ln.strip()
        if s and not set(s) <= set("=-*#") and s not in ("STDERR:", "STDOUT:", "(empty)"):
            out.append((i, ln))
            if len(out) >= n:
                break
    return out


def text_cause(scan: LogScan, after: int = -1) -> Optional[Tuple[str, int]]:
    """The cause named by a tool/shell message near the end of the log (below index `after`)."""
    for i, ln in last_lines(scan):
        if i <= after:
            break
        cid = cat.classify_text(ln.strip())
        if cid:
            return cid, i
    return None

