"""run.json read back for `--resume`: strictly, boundedly, and every value checked before use.

A run folder may have been edited, truncated or planted; a malformed run.json is one line per
problem (file, JSON path, what was expected) and exit 2, never a traceback half-way through.
"""
from __future__ import annotations

import os
from typing import Any, List

from core.validate import InvalidInput, Problem, load_json

OPTION_NUMBERS = ("grace", "retry_delay", "wait_for_gpu")


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _side(file: str, where: str, side: Any) -> List[Problem]:
    if not isinstance(side, dict):
        return [Problem(file, where, "expected an object with repo, model and hyperparameters")]
    out = [Problem(file, f"{where}.{k}", "expected a string") for k in ("repo", "model") if not isinstance(side.get(k), str)]
    hp = side.get("hyperparameters")
    if not isinstance(hp, dict):
        out.append(Problem(file, f"{where}.hyperparameters", "expected an object"))
    else:
        out += [Problem(file, f"{where}.hyperparameters.{k}", "expected a single value")
                for k, v in hp.items() if isinstance(v, (dict, list))]
    return out


def _options(file: str, opts: Any) -> List[Problem]:
    from runner import backends

    if not isinstance(opts, dict):
        return [Problem(file, "options", "expected an object")]
    out = []
    t = opts.get("timeout")
    if t is not None and not (_num(t) and t > 0):
        out.append(Problem(file, "options.timeout", "expected a positive number of seconds or null"))
    for k in OPTION_NUMBERS:
        if opts.get(k) is not None and not (_num(opts[k]) and opts[k] >= 0):
            out.append(Problem(file, f"options.{k}", "expected a number of seconds >= 0"))
    mr = opts.get("max_retries")
    if mr is not None and not (isinstance(mr, int) and not isinstance(mr, bool) and 0 <= mr <= 100):
        out.append(Problem(file, "options.max_retries", "expected a whole number from 0 to 100"))
    for k in ("require_preflight", "strict"):
        if opts.get(k) is not None and not isinstance(opts[k], bool):
            out.append(Problem(file, f"options.{k}", "expected true or false"))
    if opts.get("backend") is not None and opts["backend"] not in backends.names():
        out.append(Problem(file, "options.backend", f"expected one of {', '.join(backends.names())}"))
    return out


def manifest_problems(file: str, m: Any) -> List[Problem]:
    """Every value of a run.json that --resume uses."""
    if not isinstance(m, dict):
        return [Problem(file, "$", "expected an object (not a mutation-run results folder?)")]
    exps = m.get("experiments")
    if not isinstance(exps, list):
        return [Problem(file, "experiments", "expected a list of experiments (not a mutation-run results folder?)")]
    out: List[Problem] = []
    for k in ("settings_file", "models_config", "project_root", "launch", "only", "experiment_name"):
        if m.get(k) is not None and not isinstance(m[k], str):
            out.append(Problem(file, k, "expected a string"))
    for k, ok in (("seed", lambda v: isinstance(v, int) and not isinstance(v, bool)),
                  ("created_epoch", _num), ("probe_timeout", lambda v: _num(v) and v > 0)):
        if m.get(k) is not None and not ok(m[k]):
            out.append(Problem(file, k, "expected a number" if k != "seed" else "expected a whole number"))
    out += _options(file, m.get("options", {}))
    seen = set()
    for i, e in enumerate(exps):
        where = f"experiments[{i}]"
        if not isinstance(e, dict) or not isinstance(e.get("id"), str) or not e["id"]:
            out.append(Problem(file, where, "expected an object with an \"id\" string"))
            continue
        if e["id"] in seen:
            out.append(Problem(file, f"{where}.id", f"\"{e['id']}\" appears twice; expected unique ids"))
        seen.add(e["id"])
        out += _side(file, f"{where}.foreground", e.get("foreground"))
        if e.get("background") is not None:
            out += _side(file, f"{where}.background", e["background"])
        if e.get("warnings") is not None and not (isinstance(e["warnings"], list)
                                                  and all(isinstance(w, str) for w in e["warnings"])):
            out.append(Problem(file, f"{where}.warnings", "expected a list of strings"))
    return out


def load_manifest(run_dir: str) -> dict:
    """The run.json of `run_dir`, checked; UsageError / InvalidInput (one line per problem) otherwise."""
    from core.errors import UsageError

    if not os.path.isdir(run_dir):
        raise UsageError(f"--resume {run_dir}: not a folder")
    path = os.path.join(run_dir, "run.json")
    data, problems = load_json(path)
    if data is not None:
        problems = manifest_problems(path, data)
    if problems:
        raise InvalidInput(problems)
    return data
