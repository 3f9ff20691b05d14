"""What a parsed launch script means for one model: interpreter, entry file, data paths, flags.

Variables are expanded from the script's own assignments: the last assignment that runs for
sure (not inside an `if` or a loop, and inside a `case` only on the branch the known value
selects), `${VAR:-default}`, and `~`/`$HOME` from the launched process's HOME. The registry's
model flag (`train.sh -n hrnet18`) is followed into the argument loop (`-n) MODEL_NAME="$2"`,
getopts `n) MODEL_NAME=$OPTARG`) so that `case "$MODEL_NAME" in hrnet18) USE_HR=--use_hr`
selects the flags that model gets. Whatever cannot be followed is returned as an `Unresolved`
(file:line and why), never guessed.
"""
from __future__ import annotations

import fnmatch
import glob
import os
import re
import shlex
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from core.discover.shell import SUBST, Script, Stmt

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*|[0-9@*#?])")
_PY = re.compile(r"^python(\d+(\.\d+)?)?$")
_DATA_NAME = re.compile(r"DATA|ROOT|PAIR|DICT|CORPUS|DATASET|_DIR$|_PATH$|_FILE$|^DIR$")
_NOT_DATA = re.compile(r"PYTHON|CONDA|ENV|SAVE|LOG|OUT|RESULT|CKPT|CHECKPOINT|BACKUP|TMP|TEMP|SCRIPT|METRIC|CACHE|HOME")
_PATHLIKE = re.compile(r"/|\.(csv|tsv|txt|json|jsonl|pkl|pickle|npy|npz|h5|hdf5|pt|pth|bin|parquet|zip|tar|gz)$")
_QUIET = ("echo", "printf", "read", "cat", "print_info", "print_error", "print_warning", "print_success", "log")


@dataclass(frozen=True)
class Unresolved:
    """A construct the discovery could not follow: where, what, why."""

    file: str
    line: int
    text: str
    why: str

    @property
    def where(self) -> str:
        return f"{os.path.basename(self.file)}:{self.line}" if self.line else os.path.basename(self.file)


@dataclass(frozen=True)
class Interpreter:
    """The interpreter the script runs its entry file with, and how that was learnt.

    `how`: literal (a path written out, through variables), activate (`source <base>/bin/activate
    ENV` or `conda activate ENV` then a bare `python`), path (a bare `python` found on the launched
    PATH). `fallbacks`: interpreters a fallback loop would try when this one is missing."""

    path: str
    line: int
    how: str
    fallbacks: Tuple[str, ...] = ()
    fallback_line: int = 0


@dataclass(frozen=True)
class ScriptFacts:
    """What one model's launch through the script needs and passes on."""

    script: str
    interpreter: Optional[Interpreter] = None
    entry: str = ""  # the Python entry file, relative to the repo
    entry_line: int = 0
    argv: Tuple[str, ...] = ()  # the options the script passes the entry for this model, as far as known
    passes_args: bool = False  # the entry gets the script's own arguments ("$@")
    data: Tuple[Tuple[str, str, int], ...] = ()  # (variable, path as written after expansion, line)
    model_line: int = 0  # the case branch that selects the model's flags
    unresolved: Tuple[Unresolved, ...] = ()


class _Eval:
    """Expansion of one script's words for one model (bindings: variables the arguments set)."""

    def __init__(self, script: Script, home: str, bindings: Mapping[str, str]):
        self.script, self.home, self.bindings = script, home, dict(bindings)
        self.assigns: Dict[str, List[Tuple[int, Stmt, str]]] = {}
        for i, st in enumerate(script.stmts):
            a = st.assignment
            if a:
                self.assigns.setdefault(a[0], []).append((i, st, a[1]))
        self._active: set = set()

    def runs(self, st: Stmt) -> bool:
        """Whether a statement runs for sure: no if/loop around it, case branches that match."""
        for b in st.blocks:
            if b.kind in ("if", "loop", "and"):
                return False
            if b.kind == "case":
                subject, _ = self.expand(b.subject)
                if subject is None or not any(fnmatch.fnmatchcase(subject, p) for p in b.patterns):
                    return False
        return True

    def value(self, name: str, before: Optional[int] = None) -> Tuple[Optional[str], int]:
        """(value, line of the assignment) of a variable; (None, 0) when not known for sure."""
        if name in self.bindings:
            return self.bindings[name], 0
        if name == "HOME":
            return self.home, 0
        key = (name, before)
        if key in self._active:
            return None, 0
        self._active.add(key)
        try:
            for i, st, raw in reversed(self.assigns.get(name, [])):
                if before is not None and i >= before:
                    continue
                if self.runs(st):
                    v, _ = self.expand(raw, before=i)
                    return v, st.line
            return None, 0
        finally:
            self._active.discard(key)

    def expand(self, word: str, before: Optional[int] = None) -> Tuple[Optional[str], int]:
        """The word with its variables, `${VAR:-default}` and a leading `~` expanded; None when any
        part is only known at run time. The second value is the line that defined the first variable."""
        if SUBST in word:
            return None, 0
        first_line = [0]
        failed = [False]

        def sub(m):
            name = m.group(1) or m.group(3)
            if name in ("@", "*", "#", "?") or name.isdigit():
                failed[0] = True
                return ""
            v, line = self.value(name, before)
            if v in (None, "") and m.group(2) is not None:
                v, line = self.expand(m.group(2), before)
            if v is None:
                failed[0] = True
                return ""
            if not first_line[0]:
                first_line[0] = line
            return v

        out = _VAR.sub(sub, word)
        if failed[0]:
            return None, 0
        if out == "~" or out.startswith("~/"):
            out = self.home + out[1:]
        return out, first_line[0]


def model_bindings(script: Script, model_flag: Optional[str], model: str) -> Dict[str, str]:
    """Variables set from the registry's model flag: `-n) NAME="$2"` or getopts `n) NAME=$OPTARG`."""
    if not model_flag:
        return {}
    short = model_flag.lstrip("-")
    for st in script.stmts:
        a = st.assignment
        if not a or a[1] not in ("$2", "${2}", "$OPTARG", "${OPTARG}"):
            continue
        for b in reversed(st.blocks):
            if b.kind == "case" and (model_flag in b.patterns or (a[1].endswith("OPTARG}") or a[1] == "$OPTARG")
                                     and short in b.patterns):
                return {a[0]: model}
    return {}


def _python_call(words: Sequence[str]) -> Optional[Tuple[int, str]]:
    """(index of the interpreter word, entry file) when `words` run a Python file."""
    for i, w in enumerate(words):
        if not _PY.match(os.path.basename(w)) and not w.startswith("$") and SUBST not in w:
            continue  # an interpreter, or a word known only at run time that may be one
        j = i + 1
        while j < len(words) and words[j].startswith("-") and words[j] not in ("-m", "-c"):
            j += 1
        if j < len(words) and words[j] == "-m" and j + 1 < len(words):
            return i, "-m " + words[j + 1]
        if j < len(words) and words[j].endswith(".py"):
            return i, words[j]
    return None


def _split(text: str) -> List[str]:
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def _activation(ev: _Eval, script: Script) -> Tuple[Optional[str], int, Optional[Unresolved]]:
    """The env a bare `python` comes from: `source <base>/bin/activate ENV` or `conda activate ENV`."""
    conda_base = None
    for st in script.stmts:
        w = st.words
        if len(w) >= 2 and w[0] in ("source", ".") and w[1].endswith("etc/profile.d/conda.sh"):
            conda_base = ev.expand(w[1][: -len("/etc/profile.d/conda.sh")])[0]
    for st in script.stmts:
        w = st.words
        if len(w) >= 2 and w[0] in ("source", ".") and w[1].endswith("/bin/activate"):
            base, _ = ev.expand(w[1][: -len("/bin/activate")])
            env, _ = ev.expand(w[2]) if len(w) > 2 else ("base", 0)
        elif len(w) >= 3 and w[0] == "conda" and w[1] == "activate":
            base, _ = conda_base, 0
            env, _ = ev.expand(w[-1])
            if base is None:
                return None, st.line, Unresolved(script.path, st.line, " ".join(w),
                                                 "conda activate: the conda base folder is not named in the script")
        else:
            continue
        if base is None or env is None:
            return None, st.line, Unresolved(script.path, st.line, " ".join(w), "the environment is only known at run time")
        path = os.path.join(base, "bin", "python") if env == "base" else os.path.join(base, "envs", env, "bin", "python")
        return path, st.line, None
    return None, 0, None


def _fallbacks(ev: _Eval, script: Script) -> Tuple[Tuple[str, ...], int]:
    """A loop `for p in <base>/envs/*/bin/python` trying interpreters: the candidates it would see."""
    for st in script.stmts:
        w = st.words
        if len(w) >= 4 and w[0] == "for" and w[2] == "in":
            for pattern in w[3:]:
                if pattern in (";", "do") or not _PY.match(os.path.basename(pattern)) or "*" not in pattern:
                    continue
                expanded, _ = ev.expand(pattern)
                if expanded is not None:
                    return tuple(sorted(glob.glob(expanded))) or (expanded,), st.line
    return (), 0


def _interpreter(ev: _Eval, script: Script, word: str, line: int, path_env: str,
                 unresolved: List[Unresolved]) -> Optional[Interpreter]:
    if word == os.path.basename(word):  # a bare python: an activated env, else the launched PATH
        path, act_line, problem = _activation(ev, script)
        if problem:
            unresolved.append(problem)
            return None
        if path:
            return Interpreter(path, act_line, "activate")
        for d in path_env.split(os.pathsep):
            cand = os.path.join(d or ".", word)
            if os.path.isfile(cand) and os.access(cand, os.X_OK):
                return Interpreter(cand, line, "path")
        unresolved.append(Unresolved(script.path, line, word, f"{word} is not on the launched process's PATH ({path_env})"))
        return None
    fallbacks, fb_line = _fallbacks(ev, script)
    return Interpreter(word, line, "literal", fallbacks=fallbacks, fallback_line=fb_line)


def _entry_call(ev: _Eval, script: Script, unresolved: List[Unresolved]):
    """The first statement that runs a Python file: (stmt, expanded words, raw words, index of the
    interpreter, entry, whether the interpreter is known before run time)."""
    for i, st in enumerate(script.stmts):
        if not st.words or st.words[0] in _QUIET or st.words[0].startswith(("print_", "log_")):
            continue
        a = st.assignment
        raws = _split(a[1]) if a else list(st.words)
        words = []
        for raw in raws:
            v, _ = ev.expand(raw, before=i if a else None)
            words.append(v if v is not None else raw)
        found = _python_call(words)
        if found is None:
            continue
        k, entry = found
        known = ev.expand(raws[k], before=i if a else None)[0] is not None
        if not known:
            unresolved.append(Unresolved(script.path, st.line, " ".join(raws)[:120],
                                         f"the interpreter {raws[k]} is only known at run time"))
        return st, words, raws, k, entry, known
    return None


def script_facts(script: Script, model: str, model_flag: Optional[str], home: str, path_env: str) -> ScriptFacts:
    """Everything the script says about one model's launch, as the launched process (HOME) sees it."""
    unresolved = [Unresolved(script.path, ln, text, "cannot be tokenized") for ln, text in script.unparsed]
    ev = _Eval(script, home, model_bindings(script, model_flag, model))
    interp, entry, entry_line, argv, passes = None, "", 0, [], False
    call = _entry_call(ev, script, unresolved)
    if call is not None:
        st, words, raws, k, entry, known = call
        entry_line = st.line
        passes = any(r in ("$@", "${@}", "$*") for r in raws)
        var = _VAR.fullmatch(raws[k])
        line = ev.value(var.group(1) or var.group(3))[1] if var else st.line
        if known:
            interp = _interpreter(ev, script, words[k], line or st.line, path_env, unresolved)
        argv = [w for w in words[k + 1:] if w != entry]
        full = _built_up(ev, st)
        if full:
            argv = [w for w in _split(full)[k + 1:] if w != entry]
    flags, model_line = _model_flags(ev, script)
    return ScriptFacts(script=script.path, interpreter=interp, entry=entry, entry_line=entry_line,
                       argv=tuple(argv) + flags, passes_args=passes, data=_data_paths(ev, script),
                       model_line=model_line, unresolved=tuple(unresolved))


def _built_up(ev: _Eval, st: Stmt) -> Optional[str]:
    """A command built up in a variable (`cmd="$PY train.py"; cmd="$cmd --data_dir $D"`): its value
    after the assignments that follow in the same function and run for sure."""
    a = st.assignment
    if not a:
        return None
    func = next((b for b in st.blocks if b.kind == "func"), None)
    value, started = None, False
    for i, other, raw in ev.assigns.get(a[0], []):
        if other is st:
            started = True
        if not started or next((b for b in other.blocks if b.kind == "func"), None) != func or not ev.runs(other):
            continue
        saved = ev.bindings.get(a[0])
        if value is not None:
            ev.bindings[a[0]] = value
        new, _ = ev.expand(raw, before=i)
        if saved is None:
            ev.bindings.pop(a[0], None)
        else:
            ev.bindings[a[0]] = saved
        if new is None:
            break
        value = new
    return value


def _model_flags(ev: _Eval, script: Script) -> Tuple[Tuple[str, ...], int]:
    """Options set by variables that run for this model (`USE_HR="--use_hr"`), and the line of
    the case branch that selected them."""
    out, line = [], 0
    for st in script.stmts:
        a = st.assignment
        if not a or not ev.runs(st):
            continue
        v, _ = ev.expand(a[1])
        if v and v.startswith("-") and ev.value(a[0])[0] == v:
            out.extend(_split(v))
            cases = [b for b in st.blocks if b.kind == "case" and "$" in b.subject]
            if cases and any(name in cases[-1].subject for name in ev.bindings):
                line = line or cases[-1].line
    return tuple(dict.fromkeys(out)), line


def _data_paths(ev: _Eval, script: Script) -> Tuple[Tuple[str, str, int], ...]:
    """Data paths the script assigns (by name: DATA_DIR, TRAIN_PAIR, ...), their value for this run."""
    out = {}
    for st in script.stmts:
        a = st.assignment
        if not a or not _DATA_NAME.search(a[0]) or _NOT_DATA.search(a[0]) or not ev.runs(st):
            continue
        v, _ = ev.expand(a[1])
        if v and _PATHLIKE.search(v) and not v.startswith("-") and " " not in v and ev.value(a[0])[0] == v:
            out[a[0]] = (a[0], v, st.line)
    return tuple(out.values())


