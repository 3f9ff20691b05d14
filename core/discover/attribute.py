"""Which pretrained loads a model reaches: from the flags its launch passes, through the entry
file's `if opt.use_x:` dispatch, into the class or function that loads.

The walk starts at the entry file's module scope with the option values the launch gives
(argparse defaults, then the script's options: `--use_hr` -> `opt.use_hr` True, every other
store_true option False). Each call's `if` conditions are evaluated three-valued: all true ->
reached, one false -> not reached, otherwise maybe. Calls to functions and classes of the repo
(same file, `from model import ft_net_hr`, `import model; model.PCB`) are followed with their
arguments bound to parameters (`ibn=opt.ibn`), up to a small depth.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

YES, MAYBE = "yes", "maybe"
MAX_DEPTH = 6


class _Unknown:
    pass


UNKNOWN = _Unknown()


@dataclass(frozen=True)
class Reached:
    """A load the model reaches: the scan's load record, where it is, and the chain that led there."""

    load: Dict[str, Any]
    file: str
    line: int
    status: str  # yes | maybe
    chain: Tuple[str, ...]
    text: str = ""


def option_values(summary: dict, argv: Sequence[str]) -> Dict[str, Any]:
    """argparse destinations with the values `argv` gives them (defaults for the rest)."""
    opts: Dict[str, Any] = {}
    by_option = {}
    for a in summary.get("args", []):
        dest = a.get("dest")
        if not dest:
            continue
        action = a.get("action")
        default = a.get("default")
        if action == "store_true":
            opts[dest] = bool(default) if default not in ("<run time>",) else UNKNOWN
        elif action == "store_false":
            opts[dest] = True if default is None else default
        else:
            opts[dest] = UNKNOWN if default == "<run time>" else default
        for o in a.get("options", []):
            by_option[o] = a
    i = 0
    while i < len(argv):
        word, value = argv[i], None
        if word.startswith("--") and "=" in word:
            word, value = word.split("=", 1)
        a = by_option.get(word)
        if a is not None:
            if a.get("action") == "store_true":
                opts[a["dest"]] = True
            elif a.get("action") == "store_false":
                opts[a["dest"]] = False
            elif value is not None:
                opts[a["dest"]] = value
            elif i + 1 < len(argv):
                opts[a["dest"]] = argv[i + 1]
                i += 1
        i += 1
    return opts


class Walker:
    """Follows calls from the entry file through the repo's files (see the module docstring)."""

    def __init__(self, repo_dir: str, summary_of: Callable[[str], Optional[dict]], opts: Dict[str, Any]):
        self.repo_dir, self.summary_of, self.opts = repo_dir, summary_of, opts
        self.found: Dict[Tuple[str, int], Reached] = {}
        self.seen: Dict[Tuple[str, str, str], str] = {}

    # three-valued evaluation of the JSON conditions of core.discover.pysource -------------------
    def value(self, e: list, env: Dict[str, Any]) -> Any:
        tag = e[0]
        if tag == "opt":
            return self.opts.get(e[1], UNKNOWN)
        if tag == "name":
            return env.get(e[1], UNKNOWN)
        if tag == "const":
            return e[1]
        t = self.truth(e, env)
        return UNKNOWN if t is None else t

    def truth(self, e: list, env: Dict[str, Any]) -> Optional[bool]:
        tag = e[0]
        if tag in ("opt", "name", "const"):
            v = self.value(e, env)
            return None if v is UNKNOWN else bool(v)
        if tag == "main":
            return bool(env.get("__main__"))
        if tag == "not":
            t = self.truth(e[1], env)
            return None if t is None else not t
        if tag in ("and", "or"):
            ts = [self.truth(x, env) for x in e[1]]
            if tag == "and":
                return False if False in ts else (None if None in ts else True)
            return True if True in ts else (None if None in ts else False)
        if tag == "cmp":
            a, b = self.value(e[2], env), self.value(e[3], env)
            if a is UNKNOWN or b is UNKNOWN:
                return None
            if e[1] == "in":
                try:
                    return a in b
                except TypeError:
                    return None
            return (a == b) if e[1] == "==" else (a != b)
        return None

    # following calls --------------------------------------------------------------------------
    def module_file(self, module: str, current: str) -> Optional[str]:
        """The repo file of a module name (`model`, `pkg.mod`, `.mod`), or None outside the repo."""
        level = len(module) - len(module.lstrip("."))
        parts = [p for p in module.lstrip(".").split(".") if p]
        bases = [os.path.dirname(current)] if level else [os.path.dirname(current), self.repo_dir]
        if level > 1:
            bases = [os.path.normpath(os.path.join(bases[0], *[".."] * (level - 1)))]
        for base in bases:
            stem = os.path.join(base, *parts) if parts else base
            for cand in (stem + ".py", os.path.join(stem, "__init__.py")):
                if os.path.isfile(cand):
                    return cand
        return None

    def target(self, event: dict, summary: dict, file: str) -> Optional[Tuple[str, str]]:
        """(file, scope) a call enters, when it is a function or class of the repo."""
        name = event["call"]
        if name in summary.get("defs", {}):
            return file, name
        q = event.get("q", name)
        if q == name or "." not in q:
            return None
        module, _, attr = q.rpartition(".")
        path = self.module_file(module, file)
        if path is None:
            return None
        return path, attr

    def walk(self, file: str, scope: str, status: str, env: Dict[str, Any], chain: Tuple[str, ...], depth: int = 0):
        summary = self.summary_of(file)
        if summary is None or depth > MAX_DEPTH:
            return
        key = (file, scope, repr(sorted((k, repr(v)) for k, v in env.items())))
        if self.seen.get(key) == YES or self.seen.get(key) == status:
            return
        self.seen[key] = status
        rel = os.path.relpath(file, self.repo_dir)
        for event in summary.get("scopes", {}).get(scope, []):
            ts = [self.truth(g, env) for g in event.get("guards", [])]
            if False in ts:
                continue
            st = status if None not in ts else MAYBE
            where = f"{rel}:{event['line']}"
            if "load" in event:
                old = self.found.get((file, event["line"]))
                if old is None or (old.status == MAYBE and st == YES):
                    self.found[(file, event["line"])] = Reached(event["load"], rel, event["line"], st, chain + (where,),
                                                                event.get("text", ""))
                continue
            tgt = self.target(event, summary, file)
            if tgt is None:
                continue
            callee = self.summary_of(tgt[0])
            if callee is None or tgt[1] not in callee.get("defs", {}):
                continue
            self.walk(tgt[0], tgt[1], st, self.bind(callee["defs"][tgt[1]], event, env),
                      chain + (f"{where} {event['call']}",), depth + 1)

    def bind(self, d: dict, event: dict, env: Dict[str, Any]) -> Dict[str, Any]:
        """The callee's parameters bound to the call's arguments (values where known)."""
        out = dict(d.get("defaults", {}))
        params = d.get("params", [])
        for p, a in zip(params, event.get("args", [])):
            out[p] = self.value(a, env)
        for k, a in event.get("kwargs", {}).items():
            out[k] = self.value(a, env)
        return out


def reached_loads(repo_dir: str, entry: str, argv: Sequence[str], summary_of: Callable[[str], Optional[dict]]
                  ) -> Tuple[List[Reached], Dict[str, Any]]:
    """The loads a launch of `entry` with `argv` reaches (YES) or may reach (MAYBE), and the
    option values used. Module-level code of the repo modules the entry imports counts as run."""
    summary = summary_of(entry)
    if summary is None:
        return [], {}
    opts = option_values(summary, argv)
    w = Walker(repo_dir, summary_of, opts)
    rel = os.path.relpath(entry, repo_dir)
    w.walk(entry, "<module>", YES, {"__main__": True}, (f"{rel}",))
    for alias, q in summary.get("imports", {}).items():
        path = w.module_file(q.rpartition(".")[0] or q, entry) or w.module_file(q, entry)
        if path and path != entry:
            w.walk(path, "<module>", YES, {}, (f"{rel} imports {os.path.relpath(path, repo_dir)}",))
    return sorted(w.found.values(), key=lambda r: (r.file, r.line)), opts
