"""An `ast` scan of one Python file: pretrained loads, dataset downloads, argparse options, calls.

The user's code is parsed, never imported or run. One file gives a JSON-able summary (memoised
per path, size and mtime by core.discover.repo): its imports, its argparse options, and per scope
(`<module>`, each top-level function, each class with all its methods) the calls that matter,
each with the conditions of the `if`s around it (as small JSON expressions, see `_cond`).

A load is recognised only with literal arguments: `timm.create_model("hrnet_w18",
pretrained=True)`, torchvision builders with `pretrained=True` or `weights=` (a string or a
`*_Weights.X` enum), `torch.hub.load`, `load_state_dict_from_url`, `hf_hub_download`,
`snapshot_download`, `X.from_pretrained("org/name" or "./local/dir")`, torchvision datasets with
`download=True`. A name known only at run time is kept as an unresolvable candidate.
"""
from __future__ import annotations

import ast
import os
from typing import Any, Dict, List, Optional

SCAN_VERSION = 2
TV_NOT_BUILDERS = {"get_model_weights", "get_weight", "list_models", "get_model_builder"}
TV_DATASETS = {"CIFAR10": "cifar-10-batches-py", "CIFAR100": "cifar-100-python", "MNIST": "MNIST",
               "FashionMNIST": "FashionMNIST", "KMNIST": "KMNIST", "EMNIST": "EMNIST", "SVHN": "",
               "STL10": "stl10_binary", "Caltech101": "caltech101", "Flowers102": "flowers-102",
               "OxfordIIITPet": "oxford-iiit-pet", "Food101": "food-101", "QMNIST": "QMNIST"}
HF_HUB = ("huggingface_hub.",)
_PATH_DEST = ("dir", "path", "root", "file", "data", "folder")


def _const(node) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _Unknown


class _UnknownType:
    def __repr__(self):
        return "<run time>"


_Unknown = _UnknownType()


def _dotted(node) -> Optional[str]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _cond(node) -> list:
    """An `if` test as a small JSON expression the attribution can evaluate:
    ["opt", attr] | ["name", id] | ["const", v] | ["not", e] | ["and", [e...]] | ["or", [e...]] |
    ["cmp", op, e, e] | ["main"] (`__name__ == "__main__"`) | ["?"] (anything else)."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return ["opt", node.attr]
    if isinstance(node, ast.Name):
        return ["name", node.id]
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool, type(None))):
        return ["const", node.value]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ["not", _cond(node.operand)]
    if isinstance(node, ast.BoolOp):
        return ["and" if isinstance(node.op, ast.And) else "or", [_cond(v) for v in node.values]]
    if isinstance(node, ast.Compare) and len(node.ops) == 1:
        op = {ast.Eq: "==", ast.NotEq: "!=", ast.Is: "==", ast.IsNot: "!=", ast.In: "in"}.get(type(node.ops[0]))
        if op:
            return ["cmp", op, _cond(node.left), _cond(node.comparators[0])]
    return ["?"]


class _Scanner(ast.NodeVisitor):
    def __init__(self, source: str):
        self.source = source
        self.lines = None
        self.imports: Dict[str, str] = {}
        self.defs: Dict[str, int] = {}
        self.scopes: Dict[str, List[dict]] = {"<module>": []}
        self.args: List[dict] = []
        self.scope = "<module>"
        self.guards: List[list] = []

    # structure -----------------------------------------------------------------------------
    def visit_Import(self, node):
        for a in node.names:
            self.imports[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]

    def visit_ImportFrom(self, node):
        mod = ("." * node.level) + (node.module or "")
        for a in node.names:
            self.imports[a.asname or a.name] = f"{mod}.{a.name}" if mod else a.name

    def _enter(self, node, name: str):
        if self.scope != "<module>":
            self.generic_visit(node)  # nested definitions belong to the enclosing scope
            return
        self.defs[name] = _params(node)
        self.scopes.setdefault(name, [])
        saved, self.scope, self.guards = (self.scope, self.guards), name, []
        self.generic_visit(node)
        self.scope, self.guards = saved

    def visit_FunctionDef(self, node):
        self._enter(node, node.name)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        self._enter(node, node.name)

    def visit_If(self, node):
        test = _cond(node.test)
        if test == ["cmp", "==", ["name", "__name__"], ["const", "__main__"]]:
            test = ["main"]  # true only in the entry file
        self.visit(node.test)
        self.guards.append(test)
        for s in node.body:
            self.visit(s)
        self.guards[-1] = ["not", test]
        for s in node.orelse:
            self.visit(s)
        self.guards.pop()

    def _loop(self, node):
        self.guards.append(["?"])  # a loop body may run zero times
        self.generic_visit(node)
        self.guards.pop()

    visit_For = visit_While = visit_AsyncFor = _loop

    # calls ---------------------------------------------------------------------------------
    def segment(self, node) -> str:
        """The call's source text (first 160 characters, on one line)."""
        if self.lines is None:
            self.lines = self.source.splitlines()
        end = min(getattr(node, "end_lineno", node.lineno) or node.lineno, node.lineno + 3)
        text = " ".join(line.strip() for line in self.lines[node.lineno - 1:end])
        start = node.col_offset if end == node.lineno else 0
        return text[start:start + 160]

    def qualify(self, dotted: str) -> str:
        root, _, rest = dotted.partition(".")
        q = self.imports.get(root)
        return (q + ("." + rest if rest else "")) if q else dotted

    def visit_Call(self, node):
        self.generic_visit(node)
        name = _dotted(node.func)
        if name is None:
            return
        q = self.qualify(name)
        event = {"line": node.lineno, "call": name, "q": q, "guards": [list(g) for g in self.guards],
                 "args": [_cond(a) for a in node.args], "kwargs": {k.arg: _cond(k.value) for k in node.keywords if k.arg}}
        if name.endswith("add_argument"):
            self._argument(node)
            return
        load = _load(q, name, node, self)
        if load is not None:
            event["load"] = load
            event["text"] = self.segment(node) or name
        self.scopes[self.scope].append(event)

    def _argument(self, node):
        opts = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        dest = _const(kw["dest"]) if "dest" in kw else None
        if not isinstance(dest, str):
            longs = [o for o in opts if o.startswith("--")] or opts
            dest = longs[0].lstrip("-").replace("-", "_") if longs else None
        default = _const(kw["default"]) if "default" in kw else None
        action = _const(kw["action"]) if "action" in kw else None
        self.args.append({"options": opts, "dest": dest, "line": node.lineno,
                          "action": action if isinstance(action, str) else None,
                          "default": default if default is not _Unknown else "<run time>"})


def _kw(node, name: str, pos: Optional[int] = None):
    for k in node.keywords:
        if k.arg == name:
            return k.value
    if pos is not None and len(node.args) > pos:
        return node.args[pos]
    return None


def _weights(node, scanner) -> Any:
    """A `weights=` argument: a string, an enum member name (`ResNet50_Weights.IMAGENET1K_V1`),
    None (no load) or _Unknown."""
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, (str, type(None))) else _Unknown
    name = _dotted(node)
    if name and "." in name:
        owner, _, member = name.rpartition(".")
        if owner.rpartition(".")[2].endswith("_Weights") and member.isupper() or member == "DEFAULT":
            return member
    return _Unknown


def _literal_or_candidate(value, what: str) -> dict:
    return {} if isinstance(value, str) else {"unresolved": f"{what} is only known at run time"}


def _load(q: str, name: str, node, scanner) -> Optional[dict]:
    """The need a call loads, as a dict {kind, spec, unresolved?}; None when it loads nothing."""
    if q in ("timm.create_model", "timm.models.create_model"):
        pre = _kw(node, "pretrained", 1)
        if pre is None or _const(pre) is False:
            return None
        arch = _const(_kw(node, "model_name", 0)) if _kw(node, "model_name", 0) is not None else _Unknown
        out = {"kind": "timm", "spec": {"timm": arch if isinstance(arch, str) else "?"}}
        out.update(_literal_or_candidate(arch, "the model name"))
        if _const(pre) is not True and not out.get("unresolved"):
            out["unresolved"] = "pretrained= is only known at run time"
        return out
    if q.startswith("torchvision.models.") and q.rpartition(".")[2] not in TV_NOT_BUILDERS:
        return _torchvision(q, node, scanner)
    if q.startswith("torchvision.datasets.") and q.rpartition(".")[2] in TV_DATASETS:
        dl = _kw(node, "download")
        if dl is None or _const(dl) is False:
            return None
        root = _const(_kw(node, "root", 0)) if _kw(node, "root", 0) is not None else _Unknown
        cls = q.rpartition(".")[2]
        sub = TV_DATASETS[cls]
        out = {"kind": "path", "spec": {"path": os.path.join(root, sub) if isinstance(root, str) and sub else root
                                        if isinstance(root, str) else "?", "kind": "dataset", "downloads": cls}}
        out.update(_literal_or_candidate(root, "the dataset root"))
        return out
    if q in ("torch.hub.load",):
        repo = _const(_kw(node, "repo_or_dir", 0)) if _kw(node, "repo_or_dir", 0) is not None else _Unknown
        model = _const(_kw(node, "model", 1)) if _kw(node, "model", 1) is not None else _Unknown
        out = {"kind": "torchhub", "spec": {"torchhub": repo if isinstance(repo, str) else "?",
                                            "model": model if isinstance(model, str) else "?"}}
        out.update(_literal_or_candidate(repo, "the hub repo"))
        return out
    if q.endswith(("load_state_dict_from_url", "model_zoo.load_url")):
        url = _const(_kw(node, "url", 0)) if _kw(node, "url", 0) is not None else _Unknown
        out = {"kind": "url", "spec": {"url": url if isinstance(url, str) else "?",
                                       "file": os.path.basename(url.split("?")[0]) if isinstance(url, str) else "?"}}
        out.update(_literal_or_candidate(url, "the URL"))
        return out
    if q.endswith(("hf_hub_download", "snapshot_download")) and (q.startswith(HF_HUB) or name == q):
        repo = _const(_kw(node, "repo_id", 0)) if _kw(node, "repo_id", 0) is not None else _Unknown
        rev = _const(_kw(node, "revision")) if _kw(node, "revision") is not None else "main"
        spec = {"hf": repo if isinstance(repo, str) else "?", "revision": rev if isinstance(rev, str) else "main"}
        if q.endswith("hf_hub_download"):
            fname = _const(_kw(node, "filename", 1)) if _kw(node, "filename", 1) is not None else _Unknown
            spec["files"] = [fname] if isinstance(fname, str) else []
            out = {"kind": "hf", "spec": spec}
            out.update(_literal_or_candidate(repo, "the repo id") or _literal_or_candidate(fname, "the file name"))
            return out
        out = {"kind": "hf-snapshot", "spec": spec}
        out.update(_literal_or_candidate(repo, "the repo id"))
        return out
    if name.endswith(".from_pretrained"):
        arg = _kw(node, "pretrained_model_name_or_path", 0)
        value = _const(arg) if arg is not None else _Unknown
        if isinstance(value, str) and (value.startswith((".", "/", "~")) or value.count("/") != 1):
            return {"kind": "path", "spec": {"path": value, "kind": "model folder"}}
        out = {"kind": "hf", "spec": {"hf": value if isinstance(value, str) else "?", "files": ["config.json"]}}
        out.update(_literal_or_candidate(value, "the model name"))
        return out
    return None


def _torchvision(q: str, node, scanner) -> Optional[dict]:
    arch = q.rpartition(".")[2]
    if arch == "get_model":
        value = _const(_kw(node, "name", 0)) if _kw(node, "name", 0) is not None else _Unknown
        arch = value if isinstance(value, str) else "?"
    if not arch[:1].islower() and arch != "?":
        return None  # a class (ResNet, ...) or a weights enum, not a builder
    pre, weights = _kw(node, "pretrained"), _kw(node, "weights")
    if weights is not None:
        w = _weights(weights, scanner)
        if w is None:
            return None
        out = {"kind": "torchvision", "spec": {"torchvision": arch, "weights": w if isinstance(w, str) else "?"}}
        out.update(_literal_or_candidate(w, "weights="))
    elif pre is not None:
        if _const(pre) is False:
            return None
        out = {"kind": "torchvision", "spec": {"torchvision": arch, "pretrained": True}}
        if _const(pre) is not True:
            out["unresolved"] = "pretrained= is only known at run time"
    else:
        return None
    if arch == "?":
        out["unresolved"] = "the model name is only known at run time"
    return out


def _params(node) -> dict:
    """A function's (or a class's __init__'s) parameter names and literal defaults."""
    fn = node
    if isinstance(node, ast.ClassDef):
        fn = next((b for b in node.body if isinstance(b, ast.FunctionDef) and b.name == "__init__"), None)
    out = {"line": node.lineno, "params": [], "defaults": {}}
    if fn is None:
        return out
    args = fn.args.posonlyargs + fn.args.args
    names = [a.arg for a in args]
    if isinstance(node, ast.ClassDef) or (names and names[0] in ("self", "cls")):
        names = names[1:] if names and names[0] in ("self", "cls") else names
    out["params"] = names
    for a, d in zip(args[len(args) - len(fn.args.defaults):], fn.args.defaults):
        v = _const(d)
        if v is not _Unknown and isinstance(v, (str, int, float, bool, type(None))):
            out["defaults"][a.arg] = v
    for a, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults):
        v = _const(d) if d is not None else _Unknown
        if v is not _Unknown and isinstance(v, (str, int, float, bool, type(None))):
            out["defaults"][a.arg] = v
    return out


LOAD_WORDS = ("pretrained", "create_model", "weights", "hub.load", "load_url", "load_state_dict_from_url",
              "hf_hub_download", "snapshot_download", "download")


def may_load(source: str) -> bool:
    """False when the text cannot hold a load this module recognises (a cheap filter before parsing)."""
    return any(w in source for w in LOAD_WORDS)


def scan_source(source: str, filename: str = "<file>") -> dict:
    """The JSON-able summary of one Python file (see the module docstring); `error` when it does not parse."""
    try:
        tree = ast.parse(source, filename=filename)
    except (SyntaxError, ValueError, RecursionError) as e:
        return {"version": SCAN_VERSION, "error": f"does not parse: {getattr(e, 'msg', e)} (line {getattr(e, 'lineno', '?')})",
                "imports": {}, "defs": {}, "scopes": {}, "args": []}
    s = _Scanner(source)
    s.visit(tree)
    keep = set(s.imports) | set(s.defs)
    scopes = {k: [e for e in v if "load" in e or e["call"].split(".")[0] in keep] for k, v in s.scopes.items()}
    return {"version": SCAN_VERSION, "imports": s.imports, "defs": s.defs, "scopes": scopes, "args": s.args}


def path_defaults(summary: dict) -> List[dict]:
    """argparse options whose default is a path (by name and value): where data is read by default."""
    out = []
    for a in summary.get("args", []):
        d, dest = a.get("default"), (a.get("dest") or "").lower()
        if isinstance(d, str) and d and d != "<run time>" and any(k in dest for k in _PATH_DEST) \
                and ("/" in d or d.startswith(".")) and not any(k in dest for k in ("save", "log", "out", "result")):
            out.append(a)
    return out
