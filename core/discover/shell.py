"""Read a repo's launch script (bash) without running it: statements with their enclosing blocks.

A small tokenizer built on `shlex`: comments, heredoc bodies and command substitutions are taken
out first (a substitution becomes the word `__SUBST__`, which never expands), each logical line
(backslash continuations and multi-line quotes joined) is split into simple commands, and every
command remembers the blocks around it (`if`, loops, `case` branches, function bodies). The
evaluation of what those statements mean for one model lives in core.discover.script.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import List, Optional, Tuple

SUBST = "__SUBST__"
SEPARATORS = {";", ";;", "&&", "||", "|", "&", ";&", ";;&", "|&"}
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")
_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(\+?)=(.*)$", re.S)
_FUNC_INLINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_:.-]*)\(\)$")


@dataclass(frozen=True)
class Block:
    """One enclosing block: `kind` is func, if, loop, case, group or and (after `&&`/`||`); `subject` the case word or
    the function name; `patterns` the case branch's patterns; `line` where the block opens."""

    kind: str
    subject: str = ""
    patterns: Tuple[str, ...] = ()
    line: int = 0


@dataclass(frozen=True)
class Stmt:
    """One simple command as written (words not yet expanded), its line and its enclosing blocks."""

    line: int
    words: Tuple[str, ...]
    blocks: Tuple[Block, ...] = ()

    @property
    def assignment(self) -> Optional[Tuple[str, str]]:
        """(NAME, raw value) for `NAME=value`, `local NAME=value`, `export NAME=value`."""
        words = self.words[1:] if self.words and self.words[0] in ("local", "export", "readonly", "declare") else self.words
        if len(words) == 1:
            m = _ASSIGN.match(words[0])
            if m and not m.group(2):
                return m.group(1), m.group(3)
        return None


@dataclass(frozen=True)
class Script:
    """A parsed script: its statements in order and the lines it could not tokenize."""

    path: str
    stmts: Tuple[Stmt, ...]
    unparsed: Tuple[Tuple[int, str], ...] = ()


def _strip_comment(line: str) -> str:
    """The line without a trailing `# comment` (quote-aware; `$#`, `${#x}` and `a#b` are not comments)."""
    quote, prev = "", " "
    for i, ch in enumerate(line):
        if quote:
            if ch == quote and (quote == "'" or line[i - 1] != "\\"):
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (prev.isspace() or prev in ";&|("):
            return line[:i]
        prev = ch
    return line


def _replace_substitutions(text: str) -> str:
    """`$(...)`, `$((...))` and backquotes become SUBST (balanced parentheses, quotes respected)."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text.startswith("$(", i):
            depth, j, quote = 0, i + 1, ""
            while j < n:
                ch = text[j]
                if quote:
                    quote = "" if ch == quote else quote
                elif ch in "'\"" and depth:
                    quote = ch
                elif ch == "(":
                    depth += 1
                elif ch == ")":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            out.append(SUBST)
            i = j + 1
        elif text[i] == "`":
            j = text.find("`", i + 1)
            out.append(SUBST)
            i = n if j < 0 else j + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _logical_lines(text: str):
    """(first line number, text) of each logical line: heredoc bodies skipped, comments removed,
    backslash continuations joined. Lines whose quotes do not close are joined with the next."""
    lines = text.splitlines()
    i, pending, start = 0, "", 0
    heredoc: Optional[str] = None
    while i < len(lines):
        raw = lines[i]
        i += 1
        if heredoc is not None:
            if raw.strip() == heredoc:
                heredoc = None
            continue
        if not pending:
            start = i
        line = _strip_comment(raw) if not pending else raw
        m = _HEREDOC.search(line)
        if m:
            heredoc = m.group(2)
            line = line[:m.start()]
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield start, pending + line
        pending = ""
    if pending:
        yield start, pending


def _tokens(text: str) -> List[str]:
    lex = shlex.shlex(_replace_substitutions(text), posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = ""
    return list(lex)


class _Parser:
    """Turns token lists into statements while keeping the stack of open blocks."""

    def __init__(self):
        self.stack: List[dict] = []
        self.stmts: List[Stmt] = []

    def blocks(self) -> Tuple[Block, ...]:
        return tuple(Block(b["kind"], b.get("subject", ""), tuple(b.get("patterns", ())), b["line"]) for b in self.stack)

    def emit(self, line: int, words: List[str]) -> None:
        if words:
            self.stmts.append(Stmt(line, tuple(words), self.blocks()))

    def pop(self, kinds) -> None:
        for k in range(len(self.stack) - 1, -1, -1):
            if self.stack[k]["kind"] in kinds:
                del self.stack[k:]
                return

    def feed(self, line: int, tokens: List[str]) -> None:
        words: List[str] = []
        i = 0
        while i < len(tokens):
            tok = tokens[i]
            top = self.stack[-1] if self.stack else None
            if top is not None and top["kind"] == "case" and top.get("expect"):
                i = self._case_patterns(tokens, i, top)
                continue
            if tok in SEPARATORS:
                self.emit(line, words)
                words = []
                if self.stack and self.stack[-1]["kind"] == "and":
                    self.stack.pop()  # the command after && or || ended
                    top = self.stack[-1] if self.stack else None
                if tok.startswith(";;") and top is not None and top["kind"] == "case":
                    top["expect"] = True
                if tok in ("&&", "||"):
                    self.stack.append({"kind": "and", "line": line})  # runs only when the test allows
            elif not words and tok in ("if", "while", "until"):
                self.stack.append({"kind": "if" if tok == "if" else "loop", "line": line})
            elif not words and tok in ("then", "do", "else", "elif"):
                pass
            elif not words and tok in ("fi", "done", "esac", "}"):
                self.pop({"fi": ("if",), "done": ("loop",), "esac": ("case",), "}": ("func", "group")}[tok])
            elif not words and tok == "for":
                self.stack.append({"kind": "loop", "line": line})
                words = [tok]
            elif not words and tok == "case" and i + 2 < len(tokens) and tokens[i + 2] == "in":
                self.stack.append({"kind": "case", "subject": tokens[i + 1], "line": line, "expect": True})
                i += 3
                continue
            elif tok == "{" and (not words or (len(words) == 1 and _FUNC_INLINE.match(words[0] + "()"))):
                name = words[0] if words else ""
                self.stack.append({"kind": "func" if name else "group", "subject": name, "line": line})
                words = []
            elif tok == "()" and len(words) == 1:
                pass  # `name() {`: the name stays as the only word until `{`
            elif tok == "function" and not words and i + 1 < len(tokens):
                words = [tokens[i + 1]]
                i += 1
            else:
                words.append(tok)
            i += 1
        if words and self.stack and self.stack[-1]["kind"] == "func" and words == [self.stack[-1]["subject"]]:
            return
        self.emit(line, words)
        if self.stack and self.stack[-1]["kind"] == "and":
            self.stack.pop()

    def _case_patterns(self, tokens: List[str], i: int, top: dict) -> int:
        """Reads `pat|pat)` (or `esac`) at tokens[i]; returns the index after it."""
        if tokens[i] == "esac":
            self.pop(("case",))
            return i + 1
        pats, j = [], i
        if tokens[j] == "(":
            j += 1
        while j < len(tokens) and tokens[j] not in (")", "()"):
            if tokens[j] != "|":
                pats.append(tokens[j])
            j += 1
        top["patterns"] = pats
        top["expect"] = False
        return j + 1


def parse_script(path: str, text: str) -> Script:
    """Parse a bash script's text into statements (see Stmt); never runs anything."""
    p = _Parser()
    unparsed = []
    buffer, buffer_line = "", 0
    for line, text_line in _logical_lines(text):
        if buffer:
            text_line = buffer + "\n" + text_line
            line = buffer_line
        try:
            toks = _tokens(text_line)
        except ValueError:
            if text_line.count("\n") < 40:
                buffer, buffer_line = text_line, line
                continue
            unparsed.append((line, text_line.splitlines()[0][:120]))
            buffer = ""
            continue
        buffer = ""
        p.feed(line, toks)
    if buffer:
        unparsed.append((buffer_line, buffer.splitlines()[0][:120]))
    return Script(path=path, stmts=tuple(p.stmts), unparsed=tuple(unparsed))


def script_to_json(script: Script) -> dict:
    """A parsed script as JSON (for the on-disk memo)."""
    return {"stmts": [[st.line, list(st.words), [[b.kind, b.subject, list(b.patterns), b.line] for b in st.blocks]]
                      for st in script.stmts], "unparsed": [list(u) for u in script.unparsed]}


def script_from_json(path: str, data: dict) -> Script:
    stmts = tuple(Stmt(line, tuple(words), tuple(Block(k, subj, tuple(pats), ln) for k, subj, pats, ln in blocks))
                  for line, words, blocks in data.get("stmts", []))
    return Script(path=path, stmts=stmts, unparsed=tuple(tuple(u) for u in data.get("unparsed", [])))
