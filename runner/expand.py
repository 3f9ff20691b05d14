"""Plan expansion the way mutation.py does it: given values, mutated values, parallel pairs.

A `default` side runs with the entry's `hyperparameters` as given, in the file's order. A mutated
side (a `mutation` entry, or a parallel foreground that is not `default`) runs with a fresh value
for each name in `mutate` and nothing else, in that order (`all`: the registry's order), exactly
what mutation.py passes to its command builder; the entry's fixed `hyperparameters` are ignored,
as mutation.py ignores them. Each value is drawn from the registry's `range` with its
`distribution` (uniform, randint for ints; log_uniform, rounded and clamped for ints), after an
optional `zero_probability` of 0. A seeded `random.Random` makes the whole batch reproducible.

A draw is taken again when its key (see `core.dedup`) is the defaults', an earlier draw's of the
batch, or, with `use_deduplication`, a past run's; each entry has up to MAX_DRAWS candidates for
all its runs, as in mutation.py. Runs left without a new combination are named before the batch
starts (`DrawStats.short`).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from core.dedup import NONPARALLEL, PARALLEL, History, HistorySource, Key, combo_key, load_history
from core.model import Experiment, Side
from core.plan import Plan
from core.registry import Hyperparam, Registry

MAX_DRAWS = 1000


@dataclass(frozen=True)
class SideRun:
    """One side of a job: the repo, model and the exact hyperparameter values it runs with."""

    repo: str
    model: str
    hyperparameters: Mapping[str, Any]


@dataclass(frozen=True)
class Job:
    """One experiment with its values fixed: what the runner starts (and records in run.json)."""

    experiment: Experiment
    foreground: SideRun
    background: Optional[SideRun] = None
    warnings: Tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return self.experiment.id

    def to_dict(self) -> dict:
        d = {"id": self.id, "mode": self.experiment.mode,
             "foreground": {"repo": self.foreground.repo, "model": self.foreground.model,
                            "hyperparameters": dict(self.foreground.hyperparameters)},
             "background": None, "warnings": list(self.warnings)}
        if self.background:
            d["background"] = {"repo": self.background.repo, "model": self.background.model,
                               "hyperparameters": dict(self.background.hyperparameters)}
        return d


@dataclass(frozen=True)
class DrawStats:
    """What the draws of a batch met: candidates taken again, and why; runs left without a new value."""

    drawn: int = 0
    redrawn_history: int = 0  # the combination is a past run's (historical CSVs, earlier results)
    redrawn_batch: int = 0  # an earlier experiment of this batch has it
    redrawn_default: int = 0  # it is the registry defaults
    short: Tuple[str, ...] = ()  # experiments that repeat a combination: the ranges had no new one
    history: Optional[Tuple[HistorySource, ...]] = None  # None: use_deduplication is off
    history_runs: int = 0

    def to_dict(self) -> dict:
        return {"drawn": self.drawn, "redrawn": {"history": self.redrawn_history, "batch": self.redrawn_batch,
                                                  "default": self.redrawn_default},
                "short": list(self.short), "history_runs": self.history_runs,
                "history": None if self.history is None else
                [{"path": s.path, "runs": s.runs, "problem": s.problem} for s in self.history]}

    def lines(self) -> List[str]:
        """A few plain lines for the terminal (empty when nothing was mutated or deduplicated)."""
        out = []
        if self.history is not None:
            out.append(f"deduplication: {self.history_runs} past run(s) from {len(self.history)} source(s); "
                       f"{self.redrawn_history} of {self.drawn} candidate(s) drawn again because history had them")
            out += [f"  ! {s.path}: {s.problem}" for s in self.history if s.problem]
        elif self.drawn:
            out.append(f"deduplication against history: off (the settings do not set \"use_deduplication\": true); "
                       f"{self.drawn} candidate(s) drawn, {self.redrawn_batch} drawn again within the batch")
        if self.short:
            out.append(f"! {len(self.short)} experiment(s) repeat a combination, the ranges hold no new one: "
                       + ", ".join(self.short[:5]) + (" ..." if len(self.short) > 5 else ""))
        return out


def sample_value(h: Hyperparam, rng: random.Random) -> Any:
    """One value of `h`: 0 with its zero_probability, else drawn from its range and distribution
    (its default when it has no range), with the same calls on the generator as mutation.py."""
    zero = 0 if h.type == "int" else 0.0
    if h.zero_probability > 0 and rng.random() < h.zero_probability:
        return zero
    if not h.range:
        return h.default
    low, high = min(h.range), max(h.range)
    if h.distribution == "log_uniform" and low > 0:
        x = math.exp(rng.uniform(math.log(low), math.log(high)))
        return int(max(low, min(high, round(x)))) if h.type == "int" else max(low, min(high, x))
    if h.type == "int":
        return rng.randint(int(math.ceil(low)), int(math.floor(high)))
    return rng.uniform(low, high)


def _default_key(hps: Mapping[str, Hyperparam], kinds: Mapping[str, str], mode: str) -> Optional[Key]:
    defaults = {n: h.default for n, h in hps.items() if h.default is not None}
    return combo_key(defaults, kinds, mode) if defaults else None


class Sampler:
    """Draws mutated values, keeping each combination new against the defaults, the batch and history."""

    def __init__(self, registry: Registry, seed: Optional[int], history: Optional[History] = None):
        self.registry = registry
        self.rng = random.Random(seed)
        self.history = history
        self.batch: Dict[Tuple[str, str, Tuple[str, ...]], Set[Key]] = {}
        self.budget: Dict[Tuple, int] = {}
        self.counts = {"drawn": 0, "history": 0, "batch": 0, "default": 0}
        self.short: List[str] = []

    def _mutated(self, e: Experiment, side: Side, mode: str) -> Tuple[Dict[str, Any], List[str]]:
        spec = self.registry.repos[side.repo]
        names = [n for n in side.mutate if n in spec.hyperparams]
        if not names:
            return {}, [f"no hyperparameter of {side.repo} to mutate: mutation.py skips this entry "
                        "(\"No valid hyperparameters to mutate\"); it runs with the train script's defaults"]
        hps = {n: spec.hyperparams[n] for n in names}
        kinds = {n: h.type for n, h in hps.items()}
        past = self.history.keys(side.repo, side.model, names, kinds) if self.history else set()
        mine = self.batch.setdefault((side.repo, side.model, tuple(names)), set())
        default = _default_key(hps, kinds, mode)
        budget_key = (e.source, e.entry_index, side.repo, side.model)
        drawn: Dict[str, Any] = {}
        while self.budget.get(budget_key, 0) < MAX_DRAWS:
            self.budget[budget_key] = self.budget.get(budget_key, 0) + 1
            self.counts["drawn"] += 1
            drawn = {n: sample_value(h, self.rng) for n, h in hps.items()}
            key = combo_key(drawn, kinds, mode)
            why = "default" if key == default else "history" if key in past else "batch" if key in mine else ""
            if not why:
                mine.add(key)
                return drawn, []
            self.counts[why] += 1
        self.short.append(e.id)
        if not drawn:  # the entry's budget went to its earlier runs: still a mutated run, not the defaults
            drawn = {n: sample_value(h, self.rng) for n, h in hps.items()}
        return drawn, [f"could not draw a new combination of {', '.join(names)} in {MAX_DRAWS} draws for this entry "
                       "(the ranges are too small for runs_per_config and history): this run repeats one"]

    def side(self, e: Experiment, side: Side, mutate: bool) -> Tuple[Dict[str, Any], List[str]]:
        """The values one side runs with (given ones as written, or a new mutated combination)."""
        if not mutate:
            spec = self.registry.repos[side.repo]
            return {k: v for k, v in side.hyperparameters.items() if k in spec.hyperparams}, []
        return self._mutated(e, side, PARALLEL if e.background is not None else NONPARALLEL)

    def stats(self) -> DrawStats:
        h = self.history
        return DrawStats(drawn=self.counts["drawn"], redrawn_history=self.counts["history"],
                         redrawn_batch=self.counts["batch"], redrawn_default=self.counts["default"],
                         short=tuple(self.short), history=None if h is None else h.sources,
                         history_runs=0 if h is None else len(h.runs))


def expand_with_stats(experiments: Sequence[Experiment], registry: Registry, seed: Optional[int],
                      history: Optional[History] = None) -> Tuple[List[Job], DrawStats]:
    """Fix every experiment's values, in plan order (the order decides the draws for a seed)."""
    sampler = Sampler(registry, seed, history)
    jobs = []
    for e in experiments:
        mutate_fg = e.mode == "mutation" or (e.mode == "parallel" and bool(e.foreground.mutate))
        fg, w = sampler.side(e, e.foreground, mutate_fg)
        bg = None
        if e.background is not None:
            bg_values, w2 = sampler.side(e, e.background, False)
            w += w2
            bg = SideRun(e.background.repo, e.background.model, bg_values)
        jobs.append(Job(experiment=e, foreground=SideRun(e.foreground.repo, e.foreground.model, fg), background=bg,
                        warnings=tuple(w)))
    return jobs, sampler.stats()


def expand_plan(plan: Plan, registry: Registry, seed: Optional[int],
                results_dirs: Sequence[str] = ()) -> Tuple[List[Job], DrawStats]:
    """A settings file's jobs, drawn against the history it asks for (`use_deduplication`: its
    `historical_csvs` and the project's earlier results folders `results_dirs`)."""
    history = load_history(plan.raw_top, registry.project_root, results_dirs)
    return expand_with_stats(plan.experiments, registry, seed, history)


def expand(experiments: Sequence[Experiment], registry: Registry, seed: Optional[int],
           history: Optional[History] = None) -> List[Job]:
    """The jobs alone (see expand_with_stats)."""
    return expand_with_stats(experiments, registry, seed, history)[0]


def jobs_from_manifest(experiments: Sequence[Experiment], recorded: Sequence[Mapping[str, Any]]) -> List[Job]:
    """The jobs of a run being resumed: the plan's experiments with the values recorded in run.json."""
    by_id = {r["id"]: r for r in recorded}
    jobs = []
    for e in experiments:
        r = by_id.get(e.id)
        if r is None:
            continue
        fg = r["foreground"]
        bg = r.get("background")
        jobs.append(Job(experiment=e, foreground=SideRun(fg["repo"], fg["model"], dict(fg["hyperparameters"])),
                        background=SideRun(bg["repo"], bg["model"], dict(bg["hyperparameters"])) if bg else None,
                        warnings=tuple(r.get("warnings") or ())))
    return jobs
