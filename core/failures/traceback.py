"""Finding the fatal exception in a log and following its chain of causes.

The fatal exception is the last traceback of the log (the one that ended the process). Python
prints chained exceptions cause first, each followed by a separator:

    The above exception was the direct cause of the following exception:   (raise ... from ...)
    During handling of the above exception, another exception occurred:   (implicit context)

A chained exception may have no "Traceback (most recent call last):" header of its own (libraries
such as huggingface_hub drop the traceback of the errors they wrap), so exceptions are recognised
by their own line (`module.ErrorName: message`) as well as by headers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

# A header may follow other output on the same line (a progress bar without a newline); the
# "Original Traceback" that DataLoader quotes inside its own message is not a header.
_HEADER = re.compile(r"(?<!Original )Traceback \(most recent call last\):\s*$")


def is_header(line: str) -> bool:
    """True for a `Traceback (most recent call last):` line (a cheap substring test first)."""
    return "Traceback" in line and _HEADER.search(line) is not None

CAUSE_SEP = "The above exception was the direct cause of the following exception:"
CONTEXT_SEP = "During handling of the above exception, another exception occurred:"
_FRAME = re.compile(r'^\s+File "(?P<file>[^"]+)", line (?P<line>\d+)(?:, in (?P<func>.+))?')
_EXC = re.compile(
    r"^(?:\[(?:rank|RANK)\d+\]:\s*)?(?P<type>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?:: ?(?P<msg>.*))?$")
_EXC_WORDS = ("Error", "Exception", "Exit", "Interrupt", "Warning", "Fault", "Failure",
              "NotFound", "Timeout", "Abort", "Enabled", "Iteration")
MAX_MESSAGE_LINES = 8
_LOOKBACK = 60


def looks_like_exception(line: str) -> Optional[Tuple[str, str]]:
    """(type, message) if the line is an exception line such as
    `huggingface_hub.errors.LocalEntryNotFoundError: An error...` or `KeyboardInterrupt`."""
    if not line or line[0].isspace():
        return None
    m = _EXC.match(line)
    if not m:
        return None
    etype = m.group("type")
    last = etype.rsplit(".", 1)[-1]
    if not last[:1].isupper():
        return None
    if not any(w in last for w in _EXC_WORDS):
        return None
    if "." in etype and not all(p[:1].isalpha() or p[:1] == "_" for p in etype.split(".")):
        return None
    return etype, (m.group("msg") or "").strip()


@dataclass(frozen=True)
class Frame:
    """One `File "...", line N, in func` entry of a traceback."""

    file: str
    line: int
    func: str


@dataclass(frozen=True)
class ExceptionRecord:
    """One exception of a chain as printed: its type, message (first line plus continuation
    lines), frames, and the window index of its exception line (and of its header, if any)."""

    type: str
    message: str
    index: int
    header_index: Optional[int]
    frames: Tuple[Frame, ...] = ()
    extra: Tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.type.rsplit(".", 1)[-1]

    @property
    def line_text(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type

    @property
    def full_message(self) -> str:
        return "\n".join((self.message,) + self.extra)

    def in_files(self, *fragments: str) -> bool:
        return any(f in fr.file for fr in self.frames for f in fragments)


@dataclass(frozen=True)
class Chain:
    """The fatal exception and its causes: `records[0]` is the deepest cause, `records[-1]` the
    fatal one; `links[i]` joins records[i] to records[i+1] ("cause" or "context").
    `truncated` is True when the window starts inside the chain (read more of the log)."""

    records: Tuple[ExceptionRecord, ...]
    links: Tuple[str, ...]
    truncated: bool = False

    @property
    def fatal(self) -> ExceptionRecord:
        return self.records[-1]

    def down(self):
        """(record, link to the record above it) from the fatal exception downwards; the fatal
        one's link is None."""
        yield self.records[-1], None
        for i in range(len(self.records) - 2, -1, -1):
            yield self.records[i], self.links[i]


def _parse_from_header(lines: Sequence[str], h: int) -> Optional[ExceptionRecord]:
    frames: List[Frame] = []
    i = h + 1
    n = len(lines)
    while i < n:
        ln = lines[i]
        if not ln.strip():
            i += 1
            continue
        if ln[0].isspace():
            m = _FRAME.match(ln)
            if m:
                frames.append(Frame(m.group("file"), int(m.group("line")), (m.group("func") or "").strip()))
            i += 1
            continue
        break
    if i >= n:
        return None
    exc = looks_like_exception(lines[i])
    if exc is None:
        # Unusual exception names (`foo.Bad: ...`): take the first unindented line after frames.
        m = _EXC.match(lines[i])
        if not m:
            return None
        exc = (m.group("type"), (m.group("msg") or "").strip())
    return ExceptionRecord(exc[0], exc[1], i, h, tuple(frames), _continuation(lines, i))


def _continuation(lines: Sequence[str], i: int) -> Tuple[str, ...]:
    out: List[str] = []
    for j in range(i + 1, min(len(lines), i + 1 + MAX_MESSAGE_LINES)):
        ln = lines[j]
        if not ln.strip() or is_header(ln) or ln.strip() in (CAUSE_SEP, CONTEXT_SEP):
            break
        out.append(ln)
    return tuple(out)


def _record_ending_above(lines: Sequence[str], sep: int) -> Tuple[Optional[ExceptionRecord], bool]:
    """The exception printed just above separator line `sep`. Returns (record, hit_window_top)."""
    j = sep - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    if j < 0:
        return None, True
    lo = max(0, j - _LOOKBACK)
    k = j
    while k >= lo:
        ln = lines[k]
        if is_header(ln):
            return _parse_from_header(lines, k), False
        if ln.strip() in (CAUSE_SEP, CONTEXT_SEP):
            break
        exc = looks_like_exception(ln)
        if exc is not None:
            above = lines[k - 1] if k > 0 else ""
            if above[:1].isspace() and above.strip():
                # Frames above: walk up through them (however many) to the header.
                for h in range(k - 1, -1, -1):
                    ln_h = lines[h]
                    if is_header(ln_h):
                        return _parse_from_header(lines, h), False
                    if ln_h.strip() and not ln_h[:1].isspace():
                        break
                else:
                    return None, True
            return ExceptionRecord(exc[0], exc[1], k, None, (), _continuation(lines, k)), False
        k -= 1
    return None, lo == 0


def find_fatal(lines: Sequence[str]) -> Optional[Chain]:
    """The last traceback of `lines` with its chain of causes, or None if there is none."""
    h = fatal = None
    for i in range(len(lines) - 1, -1, -1):
        if is_header(lines[i]):
            # A header whose exception has not been printed yet (window ends mid-traceback) does
            # not count: its parse fails and we keep looking further up.
            fatal = _parse_from_header(lines, i)
            if fatal is not None:
                h = i
                break
    if fatal is None:
        return None
    records = [fatal]
    links: List[str] = []
    truncated = False
    start = h
    while True:
        j = start - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        if j < 0:
            truncated = True  # the window begins right above: more of the chain may be above
            break
        sep = lines[j].strip()
        if sep not in (CAUSE_SEP, CONTEXT_SEP):
            break
        rec, hit_top = _record_ending_above(lines, j)
        if rec is None:
            truncated = hit_top
            break
        records.insert(0, rec)
        links.insert(0, "cause" if sep == CAUSE_SEP else "context")
        start = rec.header_index if rec.header_index is not None else rec.index
        if len(records) > 20:
            break
    return Chain(tuple(records), tuple(links), truncated)
