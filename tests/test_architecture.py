"""Imports run one way: core <- checks <- doctor <- runner, and no module imports itself back.

Every module of every top-level package of the project is read with `ast` (imports inside
functions included: a cycle closed at call time is still a cycle) and its project imports are
resolved to modules. Fails on an upward import or on an import cycle, naming the modules.
"""
import ast
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"core": 0, "checks": 1, "doctor": 2, "runner": 3}  # a package may import only lower or equal layers
ISOLATED = ("observer",)  # imports nothing of the project
NOT_PRODUCT = ("tests", "bench")


def packages() -> List[str]:
    return sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name not in NOT_PRODUCT)


def modules() -> Dict[str, Path]:
    out = {}
    for pkg in packages():
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def _resolve(name: str, known: Dict[str, Path]) -> str:
    """The longest known module that `name` (a dotted import target) is or is inside of."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name


def imports_of(module: str, path: Path, known: Dict[str, Path]) -> Set[str]:
    """Project modules `module` imports, anywhere in its file."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] or [base]
        for t in targets:
            hit = _resolve(t, known)
            if hit and hit != module:
                out.add(hit)
    return out


def graph() -> Dict[str, Set[str]]:
    known = modules()
    return {m: imports_of(m, p, known) for m, p in known.items()}


def cycles(g: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in g:
        if start in index:
            continue
        work = [(start, iter(sorted(g[start])))]
        index[start] = low[start] = counter[0]; counter[0] += 1; stack.append(start); on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1; stack.append(w); on.add(w)
                    work.append((w, iter(sorted(g.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop(); on.discard(w); comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def layer(module: str) -> int:
    """Known layers as declared; any other product package sits on top (it may use everything)."""
    return LAYERS.get(module.split(".")[0], max(LAYERS.values()) + 1)


def upward(g: Dict[str, Set[str]]) -> List[str]:
    bad = []
    for m, targets in g.items():
        top = m.split(".")[0]
        for t in sorted(targets):
            if top in ISOLATED and t.split(".")[0] != top:
                bad.append(f"{m} -> {t} ({top} imports nothing of the project)")
            elif t.split(".")[0] in ISOLATED and top not in ISOLATED:
                continue  # using an isolated package is fine
            elif layer(t) > layer(m):
                bad.append(f"{m} -> {t}")
    return bad


def test_the_walk_sees_the_project():
    g = graph()
    assert {"core", "checks", "doctor", "runner"} <= set(packages())
    assert "core.model" in g and "core.needs" in g["core.model"]  # a top-level import
    assert "core.context" in g["doctor.operations"]  # imported inside make_context


def test_no_upward_import():
    assert upward(graph()) == []


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_the_checks_catch_what_they_should():
    g = {"core.a": {"core.b"}, "core.b": {"core.a", "doctor.x"}, "doctor.x": set(), "observer.o": {"core.a"}}
    assert cycles(g) == [["core.a", "core.b"]]
    assert upward(g) == ["core.b -> doctor.x", "observer.o -> core.a (observer imports nothing of the project)"]
