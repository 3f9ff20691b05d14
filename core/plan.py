"""Experiment configs (`settings/*.json`) read the way the user's mutation.py reads them.

`load_plan()` turns a settings file into a Plan: one Experiment per launch (`runs_per_config`
expanded, a parallel entry being one experiment with both sides) and the `settings` lint findings
that name what mutation.py would silently ignore or crash on.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from core.model import FAIL, OK, WARN, Experiment, Finding, Side
from core.registry import Registry, SettingsError, read_json

TOP_KEYS = {"experiment_name", "description", "governor", "runs_per_config", "max_retries", "mode",
            "use_deduplication", "historical_csvs", "experiments",
            "measure_energy"}  # ours: whether perf/RAPL energy is measured (see checks.system)
ENTRY_KEYS = {"mode", "repo", "model", "hyperparameters", "mutate", "runs_per_config", "foreground", "background"}
SIDE_KEYS = {"repo", "model", "mode", "mutate", "hyperparameters", "runs_per_config"}
# Keys seen in the wild that mutation.py ignores, with what the author probably meant.
IGNORED_ADVICE = {
    "mutate_params": "did you mean \"mutate\"? mutation.py ignores \"mutate_params\" and will mutate ALL parameters",
    "num_mutations": "mutation.py ignores it; the number of runs is \"runs_per_config\"",
    "fixed_hyperparams": "mutation.py ignores it; fixed values go in \"hyperparameters\" with \"mode\": \"default\"",
    "timeout": "mutation.py ignores it; use `mutation-run --timeout SECONDS`",
    "mutation_type": "mutation.py ignores it; the entry's kind is \"mode\" (default, mutation or parallel)",
    "experiment_type": "mutation.py ignores it; the entry's kind is \"mode\" (default, mutation or parallel)",
    "baseline_runs": "mutation.py ignores it; a baseline is a separate entry with \"mode\": \"default\"",
    "repository": "mutation.py reads \"repo\": this entry raises KeyError: 'repo'",
}
_DOC_KEY = re.compile(r"(^_|comment|note|description|purpose|estimated|expected|original|merge|created|"
                      r"creation|version|target|rationale|summary|status|validation|updated|total|time|"
                      r"session_name|reusable|actual|experiments$)", re.IGNORECASE)
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")


def safe_id(text: str) -> str:
    """An experiment id that is safe as one folder name (no separators, no dot-only names)."""
    s = _SAFE_ID.sub("_", text).strip("._") or "experiment"
    return s[:200]


@dataclass(frozen=True)
class Plan:
    """A settings file as the runner will execute it."""

    file: str
    experiments: Tuple[Experiment, ...]
    findings: Tuple[Finding, ...]
    name: str = ""
    governor: Optional[str] = None
    max_retries: int = 2
    raw_top: Mapping[str, Any] = field(default_factory=dict)


class _Lint:
    """Collects lint items and merges those with the same id and title into one finding."""

    def __init__(self, file: str):
        self.file = file
        self.items: Dict[Tuple[str, str], dict] = {}

    def add(self, fid: str, status: str, title: str, path: str, fix: Tuple[str, ...] = (), experiments=()):
        item = self.items.setdefault((fid, title), {"status": status, "paths": [], "fix": fix, "experiments": []})
        item["paths"].append(path)
        item["experiments"].extend(experiments)

    def findings(self) -> Tuple[Finding, ...]:
        out = []
        for (fid, title), it in self.items.items():
            paths = it["paths"]
            shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
            out.append(Finding(id=fid, group="settings", status=it["status"], title=title,
                               detail=f"{self.file}: {shown}", fix=tuple(it["fix"]),
                               experiments=tuple(dict.fromkeys(it["experiments"])),
                               data={"file": self.file, "paths": paths}))
        return tuple(out)


def _runs(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


class _Builder:
    def __init__(self, file: str, registry: Registry, lint: _Lint):
        self.file, self.registry, self.lint = file, registry, lint
        self.counter = 0
        self.experiments: List[Experiment] = []

    def _check_keys(self, obj: dict, where: str, allowed: set) -> None:
        for key in obj:
            if key in allowed:
                continue
            if key == "repository" and "repo" not in obj:
                continue  # reported with the experiments it blocks, see _repository_key()
            if key in IGNORED_ADVICE:
                self.lint.add("settings.ignored-key", WARN, f"\"{key}\": {IGNORED_ADVICE[key]}", f"{where}.{key}")
            elif not _DOC_KEY.search(key):
                self.lint.add("settings.ignored-key", WARN, f"\"{key}\" is not read by mutation.py and has no effect",
                              f"{where}.{key}")

    def side(self, obj: dict, where: str, mode: str) -> Optional[Side]:
        """One foreground/background/plain side; None (with a finding) when it cannot be built."""
        self._check_keys(obj, where, SIDE_KEYS if where.endswith(("foreground", "background")) else ENTRY_KEYS)
        repo = obj.get("repo", obj.get("repository"))
        model = obj.get("model")
        if not isinstance(repo, str):
            self.lint.add("settings.missing-key", FAIL, "\"repo\" missing: mutation.py raises KeyError: 'repo'",
                          f"{where}", fix=(f"add \"repo\": \"<one of {', '.join(self.registry.repos)}>\" at {where}",))
            return None
        if not isinstance(model, str):
            self.lint.add("settings.missing-key", FAIL, "\"model\" missing: mutation.py raises KeyError: 'model'", where)
            return None
        spec = self.registry.repos.get(repo)
        if spec is None:
            self.lint.add("settings.unknown-repo", FAIL, f"repo \"{repo}\" is not in the model registry",
                          f"{where}.repo", fix=(f"use one of: {', '.join(sorted(self.registry.repos))}",
                                                f"or add it to {self.registry.path}"))
            return None
        if model not in spec.models:
            self.lint.add("settings.unknown-model", FAIL, f"model \"{model}\" is not a model of {repo}",
                          f"{where}.model", fix=(f"use one of: {', '.join(spec.models)}",))
            return None
        hp = obj.get("hyperparameters") or {}
        if mode != "default" and isinstance(hp, dict) and hp:
            self.lint.add("settings.ignored-hyperparameters", WARN,
                          "\"hyperparameters\" on a mutation entry: mutation.py ignores them and mutates instead",
                          f"{where}.hyperparameters",
                          fix=("set \"mode\": \"default\" on each entry listed to run its values, or remove its \"hyperparameters\"",))
        if not isinstance(hp, dict):
            self.lint.add("settings.bad-value", FAIL, "\"hyperparameters\" must be an object", f"{where}.hyperparameters")
            hp = {}
        for name in hp:
            if name not in spec.hyperparams:
                self.lint.add("settings.unknown-hyperparameter", WARN,
                              f"{repo} has no hyperparameter \"{name}\": mutation.py drops it silently",
                              f"{where}.hyperparameters.{name}",
                              fix=(f"use one of: {', '.join(spec.hyperparams)}",))
        hp = {k: v for k, v in hp.items() if k in spec.hyperparams}
        mutate: Tuple[str, ...] = ()
        if mode != "default":
            raw = obj.get("mutate", ["all"])
            if isinstance(raw, str):
                raw = [raw]
            if not isinstance(raw, list):
                self.lint.add("settings.bad-value", FAIL, "\"mutate\" must be a list of hyperparameter names", f"{where}.mutate")
                raw = []
            if "all" in raw:
                mutate = tuple(spec.hyperparams)
            else:
                for name in raw:
                    if name not in spec.hyperparams:
                        self.lint.add("settings.unknown-hyperparameter", WARN,
                                      f"{repo} has no hyperparameter \"{name}\" to mutate: mutation.py skips it",
                                      f"{where}.mutate", fix=(f"use one of: {', '.join(spec.hyperparams)}",))
                mutate = tuple(n for n in raw if n in spec.hyperparams)
        return Side(repo=repo, model=model, hyperparameters=hp, mutate=mutate,
                    needs=self.registry.needs_for(repo, model))

    def add(self, mode: str, fg: Side, bg: Optional[Side], runs: int, where: str, index: int) -> List[str]:
        ids = []
        for r in range(runs):
            self.counter += 1
            eid = safe_id(f"{fg.repo}_{fg.model}_{self.counter:03d}" + ("_parallel" if bg else ""))
            self.experiments.append(Experiment(id=eid, mode=mode, foreground=fg, background=bg, run_index=r,
                                               source=f"{self.file}:{where}", entry_index=index))
            ids.append(eid)
        return ids

    def entry(self, e: Any, i: int, top_runs: int, top_mode: Any = "mutation") -> None:
        where = f"experiments[{i}]"
        if not isinstance(e, dict):
            self.lint.add("settings.bad-entry", FAIL, "an experiment entry must be an object", where)
            return
        if not ({"repo", "repository", "model", "foreground", "background"} & set(e)):
            if not any(k in e for k in ("mode", "mutate", "hyperparameters")):
                self.lint.add("settings.not-an-experiment", OK, "entry without repo or model (a comment?) is skipped", where)
                return
        mode = e.get("mode", top_mode)  # mutation.py: the entry's mode, else the file's, else mutation
        mode_at = f"{where}.mode" if "mode" in e else "mode"
        if mode != "parallel" and ("foreground" in e or "background" in e):
            self.lint.add("settings.unknown-mode", FAIL,
                          "foreground/background without \"mode\": \"parallel\": mutation.py treats it as a "
                          f"{'default' if mode == 'default' else 'mutation'} entry and raises KeyError: 'repo'", where,
                          fix=(f"set \"mode\": \"parallel\" at {where}",))
            return
        if mode == "parallel":
            self._check_keys(e, where, ENTRY_KEYS)
            fgd, bgd = e.get("foreground"), e.get("background")
            if not isinstance(fgd, dict) or not isinstance(bgd, dict):
                missing = "foreground" if not isinstance(fgd, dict) else "background"
                self.lint.add("settings.missing-key", FAIL, f"\"{missing}\" missing: a parallel entry needs both sides",
                              f"{where}.{missing}")
                return
            # mutation.py mutates the foreground only for "mutation" (its default); any other mode runs
            # the foreground's fixed hyperparameters
            fmode = "mutation" if fgd.get("mode", "mutation") == "mutation" else "default"
            fg = self.side(fgd, f"{where}.foreground", fmode)
            bg = self.side(bgd, f"{where}.background", "default")
            if fg is None or bg is None:
                return
            runs = _runs(e.get("runs_per_config")) or _runs(fgd.get("runs_per_config")) or top_runs
            ids = self.add("parallel", fg, bg, runs, where, i)
            self._repository_key({f"{where}.foreground": fgd, f"{where}.background": bgd}, ids)
            return
        if mode not in ("default", "mutation"):
            self.lint.add("settings.unknown-mode", WARN,
                          f"mode \"{mode}\" is not default, mutation or parallel: mutation.py treats it as mutation",
                          mode_at, fix=(f"set \"mode\": \"mutation\" (or \"default\") at {mode_at}",))
        kind = "default" if mode == "default" else "mutation"
        side = self.side(e, where, kind)
        if side is None:
            return
        runs = _runs(e.get("runs_per_config")) or top_runs
        ids = self.add(kind, side, None, runs, where, i)
        self._repository_key({where: e}, ids)

    def _repository_key(self, objs: Mapping[str, dict], ids: List[str]) -> None:
        """`repository` instead of `repo`: we understand it, mutation.py crashes; block until renamed."""
        for where, obj in objs.items():
            if "repository" in obj and "repo" not in obj:
                self.lint.add("settings.repository-key", FAIL, f"\"repository\": {IGNORED_ADVICE['repository']}",
                              f"{where}.repository", fix=(f"rename \"repository\" to \"repo\" in {self.file}",),
                              experiments=ids)


def load_plan(path: str, registry: Registry) -> Plan:
    """Read a settings file into a Plan. Raises SettingsError only when the file cannot be read at all."""
    path = os.path.abspath(path)
    data = read_json(path)
    lint = _Lint(path)
    if isinstance(data, list):
        lint.add("settings.top-level-list", WARN,
                 "the file is a JSON list: mutation.py expects an object with \"experiments\" and crashes",
                 "$", fix=(f"wrap it: {{\"experiment_name\": \"{os.path.splitext(os.path.basename(path))[0]}\", \"experiments\": [...]}}",))
        data = {"experiments": data}
    if not isinstance(data, dict):
        raise SettingsError(path, "$", f"expected an object with \"experiments\", got {type(data).__name__}")
    entries = data.get("experiments")
    if not isinstance(entries, list):
        raise SettingsError(path, "experiments", "expected a list of experiment entries")
    b = _Builder(path, registry, lint)
    b._check_keys(data, "$", TOP_KEYS)
    top_runs = _runs(data.get("runs_per_config"))
    if "runs_per_config" in data and top_runs is None:
        lint.add("settings.bad-value", FAIL, "\"runs_per_config\" must be a whole number >= 1", "runs_per_config")
    top_mode = data.get("mode", "mutation")
    for i, e in enumerate(entries):
        b.entry(e, i, top_runs or 1, top_mode)
    if not b.experiments:
        lint.add("settings.empty", WARN, "no experiment to run", "experiments")
    max_retries = data.get("max_retries", 2)
    return Plan(file=path, experiments=tuple(b.experiments), findings=lint.findings(),
                name=str(data.get("experiment_name") or os.path.splitext(os.path.basename(path))[0]),
                governor=data.get("governor") if isinstance(data.get("governor"), str) else None,
                max_retries=max_retries if isinstance(max_retries, int) and max_retries >= 0 else 2,
                raw_top={k: v for k, v in data.items() if k != "experiments"})


def registry_plan(registry: Registry) -> Plan:
    """Without a settings file: one pseudo-experiment per model of the registry."""
    exps = tuple(
        Experiment(id=safe_id(f"{repo}_{model}"), mode="default",
                   foreground=Side(repo=repo, model=model, needs=registry.needs_for(repo, model)),
                   source=f"{registry.path}:models.{repo}")
        for repo, spec in registry.repos.items() for model in spec.models)
    return Plan(file="", experiments=exps, findings=(), name="registry")
