"""Reading result folders: experiment discovery, experiment.json, and logs read from the end.

Logs can be hundreds of megabytes. They are never read whole: a `Tail` starts with the last
block of a file and grows backwards, block by block, only while the caller still needs more
(the fatal traceback has not been seen completely), up to a byte cap. Line numbers of evidence
are made absolute by counting newlines before the window in fixed-size blocks (constant
memory), and only for the few lines that end up in a report.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterator, List, Optional, Sequence, Tuple

from core.safefs import open_regular, read_regular
from core.errors import UsageError

EXPERIMENT_FILE = "experiment.json"
FIRST_BLOCK = 64 * 1024
SUCCESS_BLOCK = 16 * 1024  # a run that succeeded: its last 16 KiB (exit code line, report, stray tracebacks)
DEFAULT_CAP = 512 * 1024
LINE_COUNT_CAP = 256 * 1024 * 1024
_COUNT_BLOCK = 1024 * 1024

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
# Escape sequences that lost their ESC byte in copies of logs ("[0;34m[INFO][0m").
_BARE_ANSI = re.compile(r"\[(?:\d{1,3}(?:;\d{1,3})*)?m")


class ExplainInputError(UsageError):
    """PATH or an option cannot be used (missing, unreadable, holds no experiment). One-line message,
    exit 2 (doctor.cli.guarded)."""


def clean_line(raw: str) -> str:
    """A log line as a person sees it: colour codes removed, carriage-return redraws collapsed
    (tqdm) to the last non-empty segment, trailing whitespace stripped."""
    if "\r" in raw:
        parts = [p for p in raw.split("\r") if p.strip()]
        raw = parts[-1] if parts else ""
    if "\x1b" in raw:
        raw = _ANSI.sub("", raw)
    if "m[" in raw or raw.startswith("["):
        raw = _BARE_ANSI.sub("", raw)
    return raw.rstrip()


class CleanLines(Sequence):
    """A list of raw lines seen cleaned (clean_line), each cleaned on first access only."""

    __slots__ = ("_raw", "_done")

    def __init__(self, raw: List[str]):
        self._raw = raw
        self._done: dict = {}

    def __len__(self) -> int:
        return len(self._raw)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self._raw)))]
        if i < 0:
            i += len(self._raw)
        v = self._done.get(i)
        if v is None:
            v = self._done[i] = clean_line(self._raw[i])
        return v

    def __iter__(self):
        for i in range(len(self._raw)):
            yield self[i]

    def __eq__(self, other):
        return list(self) == list(other)


# --------------------------------------------------------------------------- discovery

def find_experiments(path: str) -> Tuple[str, ...]:
    """Absolute experiment folders under PATH (a results root, a run folder or one experiment).

    An experiment folder is a folder holding experiment.json; its subfolders are not searched.
    Raises ExplainInputError when PATH is missing, not a folder, unreadable or holds none."""
    root = os.path.abspath(path)
    if not os.path.exists(root):
        raise ExplainInputError(f"{path}: no such file or directory (expected a results folder)")
    if os.path.isfile(root):
        if os.path.basename(root) == EXPERIMENT_FILE:
            return (os.path.dirname(root),)
        raise ExplainInputError(
            f"{path}: is a file; expected a results root, a run folder or an experiment folder")
    if not os.access(root, os.R_OK | os.X_OK):
        raise ExplainInputError(f"{path}: permission denied (cannot list the folder)")
    if os.path.isfile(os.path.join(root, EXPERIMENT_FILE)):
        return (root,)
    found: List[str] = []
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                subdirs = [e.path for e in it if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        for sub in subdirs:
            if os.path.isfile(os.path.join(sub, EXPERIMENT_FILE)):
                found.append(sub)
            else:
                stack.append(sub)
    if not found:
        raise ExplainInputError(
            f"{path}: no {EXPERIMENT_FILE} found in it or below it "
            "(expected a results root, a run folder or an experiment folder)")
    return tuple(sorted(found))


# --------------------------------------------------------------------------- experiment.json

@dataclass(frozen=True)
class JsonRecord:
    """experiment.json as read: the data (None if unreadable), its text, and the error if any."""

    path: str
    data: Optional[dict]
    text: str = ""
    error: str = ""

    def line_of(self, needle: str) -> Optional[int]:
        """1-based line of the first line containing `needle` (a key such as '"error_message"')."""
        if not self.text:
            return None
        i = self.text.find(needle)
        if i < 0:
            return None
        return self.text.count("\n", 0, i) + 1


def read_experiment_json(folder: str) -> JsonRecord:
    path = os.path.join(folder, EXPERIMENT_FILE)
    try:
        raw = read_regular(path, 16 * 1024 * 1024 + 1, follow=False)
    except OSError as e:
        return JsonRecord(path, None, "", f"cannot read: {e.strerror or e}")
    if len(raw) > 16 * 1024 * 1024:
        return JsonRecord(path, None, "", "larger than 16 MiB; not an experiment record")
    text = raw.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        return JsonRecord(path, None, text, f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}")
    except (RecursionError, ValueError):  # nested too deeply, a number of thousands of digits
        return JsonRecord(path, None, text, "nested too deeply or a number too long; not an experiment record")
    if not isinstance(data, dict):
        return JsonRecord(path, None, text, f"expected a JSON object at the top, found {type(data).__name__}")
    return JsonRecord(path, data, text)


def read_small_text(path: str, limit: int = 4 * 1024 * 1024) -> Optional[str]:
    """A small file (summary.csv) as text, or None when absent/unreadable/too large."""
    try:
        raw = read_regular(path, limit + 1, follow=False)
        return None if len(raw) > limit else raw.decode("utf-8", errors="replace")
    except OSError:
        return None


# --------------------------------------------------------------------------- tails

@lru_cache(maxsize=4096)
def _newlines_before(path: str, offset: int, mtime_ns: int) -> Optional[int]:
    if offset > LINE_COUNT_CAP:
        return None
    n = 0
    try:
        with open_regular(path, follow=False) as f:
            left = offset
            while left > 0:
                b = f.read(min(_COUNT_BLOCK, left))
                if not b:
                    break
                n += b.count(b"\n")
                left -= len(b)
    except OSError:
        return None
    return n


@dataclass
class Tail:
    """The end of a log file, read backwards in blocks.

    `text` holds whole lines from byte offset `start` to the end of the file; `grow()` reads the
    previous block (doubling the block size each time) until `cap` bytes or the file start."""

    path: str
    cap: int = DEFAULT_CAP
    size: int = 0
    start: int = 0
    mtime_ns: int = 0
    bytes_read: int = 0
    _buf: bytes = b""
    _block: int = FIRST_BLOCK
    _cut: int = 0
    _lines: Optional[CleanLines] = field(default=None, repr=False)
    _raw: Optional[List[str]] = field(default=None, repr=False)
    _data: Optional[bytes] = field(default=None, repr=False)
    _text: Optional[str] = field(default=None, repr=False)

    @classmethod
    def open(cls, path: str, first: int = FIRST_BLOCK, cap: int = DEFAULT_CAP) -> Optional["Tail"]:
        """The last `first` bytes of `path` (whole lines), or None if it cannot be read."""
        try:
            f = open_regular(path, follow=False)
        except OSError:
            return None
        with f:
            try:
                st = os.fstat(f.fileno())
                t = cls(path=path, cap=max(cap, first), size=st.st_size, start=st.st_size,
                        mtime_ns=st.st_mtime_ns, _block=first)
                start = max(0, st.st_size - first)
                chunk = os.pread(f.fileno(), st.st_size - start, start) if st.st_size else b""
            except OSError:
                return None
        t._take(chunk, start)
        return t

    @property
    def at_file_start(self) -> bool:
        return self.start == 0

    def _read_back(self, n: int) -> bool:
        new_start = max(0, self.start - n)
        if new_start == self.start:
            return False
        try:
            with open_regular(self.path, follow=False) as f:
                chunk = os.pread(f.fileno(), self.start - new_start, new_start)
        except OSError:
            return False
        self._take(chunk, new_start)
        return True

    def _take(self, chunk: bytes, new_start: int) -> None:
        self.bytes_read += len(chunk)
        self._buf = chunk + self._buf if self._buf else chunk
        self.start = new_start
        if new_start > 0:
            nl = self._buf.find(b"\n")  # the first line is partial: skip it
            self._cut = len(self._buf) if nl < 0 else nl + 1
        else:
            self._cut = 0
        self._lines = self._text = self._raw = self._data = None

    def grow(self) -> bool:
        """Read the previous block. False when at the file start or the byte cap."""
        if self.start == 0 or self.bytes_read >= self.cap:
            return False
        n = min(self._block, self.cap - self.bytes_read)
        self._block *= 2
        return self._read_back(n)

    @property
    def _first_line_offset(self) -> int:
        return self.start + self._cut

    @property
    def data(self) -> bytes:
        """The window's raw bytes (whole lines only); searching these avoids decoding."""
        if self._data is None:
            self._data = self._buf[self._cut:] if self._cut else self._buf
        return self._data

    def index_of(self, byte_pos: int) -> int:
        """Index into `lines` of the line holding byte `byte_pos` of `data`."""
        return self.data.count(b"\n", 0, byte_pos)

    @property
    def text(self) -> str:
        """The window's raw text (whole lines only)."""
        if self._text is None:
            self._text = self._buf[self._cut:].decode("utf-8", errors="replace")
        return self._text

    @property
    def lines(self) -> CleanLines:
        """The window's lines, cleaned (see clean_line) as they are read; a trailing newline adds
        no empty line."""
        if self._lines is None:
            self._lines = CleanLines(self.raw_lines)
        return self._lines

    @property
    def raw_lines(self) -> List[str]:
        """The window's lines as in the file (not cleaned); cheap."""
        if self._raw is None:
            t = self.text
            if t.endswith("\n"):
                t = t[:-1]
            self._raw = t.split("\n") if t else []
        return self._raw

    def line(self, index: int) -> str:
        """One cleaned line (without cleaning the whole window)."""
        if self._lines is not None:
            return self._lines[index]
        return clean_line(self.raw_lines[index])

    def line_number(self, index: int, count: bool = True) -> Optional[int]:
        """Absolute 1-based line number of `lines[index]`. Free when the window reaches the file
        start; otherwise the newlines before the window are counted (in 1 MiB blocks), unless
        `count` is False (then None), or the window starts beyond LINE_COUNT_CAP (None)."""
        off = self._first_line_offset
        if off and not count:
            return None
        before = 0 if off == 0 else _newlines_before(self.path, off, self.mtime_ns)
        return None if before is None else before + index + 1

    def iter_back(self) -> Iterator[Tuple[int, str]]:
        """(index, line) from the last line upwards."""
        ls = self.lines
        for i in range(len(ls) - 1, -1, -1):
            yield i, ls[i]


def section_of(lines: List[str], index: int) -> str:
    """For terminal_output.txt: the section ("STDOUT" or "STDERR") that holds lines[index], or ""."""
    for i in range(index, -1, -1):
        s = lines[i].strip()
        if s in ("STDOUT:", "STDERR:"):
            return s[:-1]
    return ""
