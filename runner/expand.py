"""Plan expansion the way mutation.py does it: default values, mutated values, parallel pairs.

A `default` experiment runs with the entry's `hyperparameters` as given. A `mutation` experiment
runs with the entry's fixed `hyperparameters` plus a fresh value for each name in `mutate`, drawn
from the registry's `range` with its `distribution` (uniform or log_uniform, int or float). The
drawn combination is never exactly the registry defaults and never repeats an earlier draw of the
same repo/model in the batch. A seeded `random.Random` makes the whole batch reproducible.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from core.model import Experiment, Side
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


def _coerce(h: Hyperparam, value: Any) -> Any:
    if h.type == "int":
        return int(round(value))
    return float(value)


def sample_value(h: Hyperparam, rng: random.Random) -> Any:
    """One value of `h` drawn from its range and distribution (the default when it has no range)."""
    if not h.range:
        return h.default
    low, high = float(min(h.range)), float(max(h.range))
    if h.distribution == "log_uniform" and low > 0:
        x = math.exp(rng.uniform(math.log(low), math.log(high)))
    elif h.type == "int":
        return rng.randint(int(math.ceil(low)), int(math.floor(high)))
    else:
        x = rng.uniform(low, high)
    if h.type == "int":
        return min(max(int(round(x)), int(math.ceil(low))), int(math.floor(high)))
    return x


def _key(values: Mapping[str, Any]) -> Tuple:
    return tuple(sorted((k, round(v, 12) if isinstance(v, float) else v) for k, v in values.items()))


def _is_default(values: Mapping[str, Any], hps: Mapping[str, Hyperparam]) -> bool:
    for name, v in values.items():
        d = hps[name].default
        if d is None:
            return False
        try:
            if not math.isclose(float(v), float(d), rel_tol=1e-9, abs_tol=1e-12):
                return False
        except (TypeError, ValueError):
            if v != d:
                return False
    return True


class Sampler:
    """Draws mutated values; remembers earlier draws per repo/model so values stay distinct."""

    def __init__(self, registry: Registry, seed: Optional[int]):
        self.registry = registry
        self.rng = random.Random(seed)
        self.seen: Dict[Tuple[str, str], set] = {}

    def side(self, side: Side, mutate: bool) -> Tuple[Dict[str, Any], List[str]]:
        spec = self.registry.repos[side.repo]
        fixed = {k: _coerce(spec.hyperparams[k], v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
                 for k, v in side.hyperparameters.items() if k in spec.hyperparams}
        names = [n for n in side.mutate if n in spec.hyperparams] if mutate else []
        if not names:
            return fixed, []
        hps = {n: spec.hyperparams[n] for n in names}
        seen = self.seen.setdefault((side.repo, side.model), set())
        warnings: List[str] = []
        for _ in range(MAX_DRAWS):
            drawn = {n: _coerce(h, sample_value(h, self.rng)) for n, h in hps.items()}
            combo = dict(fixed, **drawn)
            if _is_default(drawn, hps) or _key(combo) in seen:
                continue
            break
        else:
            warnings.append(f"could not draw a new combination of {', '.join(names)} in {MAX_DRAWS} tries "
                            "(range too small for runs_per_config): this one repeats an earlier one or the defaults")
        seen.add(_key(combo))
        return combo, warnings


def expand(experiments: Sequence[Experiment], registry: Registry, seed: Optional[int]) -> List[Job]:
    """Fix every experiment's values, in plan order (the order decides the draws for a seed)."""
    sampler = Sampler(registry, seed)
    jobs = []
    for e in experiments:
        mutate_fg = e.mode == "mutation" or (e.mode == "parallel" and bool(e.foreground.mutate))
        fg, w = sampler.side(e.foreground, mutate_fg)
        bg = None
        if e.background is not None:
            bg_values, w2 = sampler.side(e.background, False)
            w += w2
            bg = SideRun(e.background.repo, e.background.model, bg_values)
        jobs.append(Job(experiment=e, foreground=SideRun(e.foreground.repo, e.foreground.model, fg), background=bg,
                        warnings=tuple(w)))
    return jobs


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
