"""Command lines as mutation.py builds them, as argv lists (no shell).

`train_script [model_flag model] [required_args...] [flag value ...]`: the model flag unless the
model is `default`; the flags in the order of the values given (for a default run the settings
file's order, for a mutated run the order of the parameters mutated, see runner.expand); ints
printed as whole numbers (truncated, as `int()` does), floats `%.6f`, anything else as `str()`.
"""
from __future__ import annotations

import os
from typing import Any, List, Mapping, Tuple

from core.registry import Registry, RepoSpec


def format_value(kind: str, value: Any) -> str:
    """One value as mutation.py prints it for a parameter of type `kind`."""
    try:
        if kind == "int":
            return str(int(value)) if not isinstance(value, str) else str(int(float(value)))
        if kind == "float":
            return "%.6f" % float(value)
    except (TypeError, ValueError):
        return str(value)
    if isinstance(value, float):
        return "%.6f" % value
    return str(value)


def build_argv(spec: RepoSpec, model: str, hyperparameters: Mapping[str, Any]) -> List[str]:
    """The argv of one training process, relative to the repo folder (its cwd)."""
    argv = [spec.train_script]
    if spec.model_flag and model != "default":
        argv += [spec.model_flag, model]
    argv += list(spec.required_args)
    for name, value in hyperparameters.items():
        h = spec.hyperparams.get(name)
        if h is None or value is None:
            continue
        argv += [h.flag, format_value(h.type, value)]
    return argv


def executable_argv(argv: List[str], cwd: str) -> List[str]:
    """Make a script that is not executable runnable the way its suffix says (bash / python).

    The user's train scripts are `./train.sh`, usually executable; a checkout that lost the
    executable bit (a copy, a zip) would otherwise fail with "Permission denied".
    """
    script = argv[0]
    path = script if os.path.isabs(script) else os.path.join(cwd, script)
    if os.path.isfile(path) and not os.access(path, os.X_OK):
        if script.endswith(".sh"):
            return ["bash", *argv]
        if script.endswith(".py"):
            return ["python3", *argv]
    return argv


def side_command(registry: Registry, side) -> Tuple[List[str], str]:
    """The argv (runnable as it is) and the cwd of one side of a job (a `runner.expand.SideRun`)."""
    spec = registry.repos[side.repo]
    return executable_argv(build_argv(spec, side.model, side.hyperparameters), spec.path), spec.path
