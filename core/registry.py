"""The model registry: the user's `models_config.json` format, plus optional `requires` needs.

```
{"models": {repo: {"path", "train_script", "models": [...], "model_flag"?, "required_args"?,
                   "supported_hyperparams": {name: {flag, type, default, range, distribution}},
                   "performance_metrics": {"log_patterns": {...}},
                   "requires": {model or "*": [need, ...]}}}}
```
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from core.model import Need
from core.needs import KINDS, adapter, need_kind  # noqa: F401 - need_kind re-exported


class SettingsError(Exception):
    """A file that cannot be used at all: one line naming the file, the JSON path and what was expected."""

    def __init__(self, file: str, json_path: str, message: str):
        self.file, self.json_path, self.message = file, json_path, message
        where = f"{file}: {json_path}: " if json_path else f"{file}: "
        super().__init__(where + message)


@dataclass(frozen=True)
class Hyperparam:
    """One supported hyperparameter of a repo: its command-line flag, type, default and range."""

    name: str
    flag: str
    type: str = "float"
    default: Any = None
    range: Optional[Tuple[float, float]] = None
    distribution: str = "uniform"
    zero_probability: float = 0.0  # chance that a draw is exactly 0 before the distribution is used


@dataclass(frozen=True)
class RepoSpec:
    """One repo of the registry, with its models and what each model needs at run time."""

    name: str
    path: str  # absolute
    train_script: str
    models: Tuple[str, ...]
    model_flag: Optional[str] = None
    required_args: Tuple[str, ...] = ()
    hyperparams: Mapping[str, Hyperparam] = field(default_factory=dict)
    log_patterns: Mapping[str, str] = field(default_factory=dict)
    requires: Mapping[str, Tuple[Mapping[str, Any], ...]] = field(default_factory=dict)
    measure_energy: Optional[bool] = None  # None: decided by the settings file (see checks.system)


@dataclass(frozen=True)
class Registry:
    """All repos of a models_config.json, and whether it declares any needs at all."""

    path: str
    project_root: str
    repos: Mapping[str, RepoSpec]

    @property
    def declares_needs(self) -> bool:
        return any(r.requires for r in self.repos.values())

    def needs_for(self, repo: str, model: str) -> Tuple[Need, ...]:
        spec = self.repos.get(repo)
        if spec is None:
            return ()
        raw = tuple(spec.requires.get("*", ())) + tuple(spec.requires.get(model, ()))
        return tuple(Need(kind=need_kind(d), spec=d, repo=repo, repo_dir=spec.path) for d in raw)


def _check_need(file: str, where: str, d: Any) -> None:
    if not isinstance(d, dict):
        raise SettingsError(file, where, f"expected an object such as {{\"timm\": \"hrnet_w18\"}}, got {type(d).__name__}")
    kinds = [k for k in KINDS if k in d]
    if len(kinds) != 1:
        raise SettingsError(file, where, f"expected exactly one of {', '.join(KINDS)}, got keys {sorted(d)}")
    problems = adapter(kinds[0]).validate(d)
    if problems:
        field_name, expected = problems[0]
        raise SettingsError(file, f"{where}.{field_name}", expected)


def _hyperparams(file: str, where: str, raw: Any) -> Dict[str, Hyperparam]:
    if not isinstance(raw, dict):
        raise SettingsError(file, where, "expected an object of hyperparameter definitions")
    out = {}
    for name, h in raw.items():
        if not isinstance(h, dict) or not isinstance(h.get("flag"), str):
            raise SettingsError(file, f"{where}.{name}", "expected an object with a \"flag\" string")
        rng = h.get("range")
        if rng is not None and not (isinstance(rng, list) and len(rng) == 2 and all(isinstance(x, (int, float)) for x in rng)):
            raise SettingsError(file, f"{where}.{name}.range", "expected [low, high]")
        zp = h.get("zero_probability", 0.0)
        if isinstance(zp, bool) or not isinstance(zp, (int, float)) or not 0 <= zp <= 1:
            raise SettingsError(file, f"{where}.{name}.zero_probability", "expected a number from 0 to 1")
        out[name] = Hyperparam(name=name, flag=h["flag"], type=str(h.get("type", "float")), default=h.get("default"),
                               range=tuple(rng) if rng else None, distribution=str(h.get("distribution", "uniform")),
                               zero_probability=float(zp))
    return out


def _required_args(file: str, where: str, raw: Any) -> Tuple[str, ...]:
    import shlex

    if raw is None:
        return ()
    if isinstance(raw, dict):
        return tuple(w for v in raw.values() for w in shlex.split(str(v)))
    if isinstance(raw, list):
        return tuple(str(x) for x in raw)
    if isinstance(raw, str):
        return tuple(shlex.split(raw))
    raise SettingsError(file, where, "expected an object, a list or a string of arguments")


JSON_FILE_LIMIT = 64 * 1024 * 1024  # a settings file or registry larger than this is not one


def read_json(path: str, missing_hint: str = "") -> Any:
    """A JSON file, or SettingsError naming the file and, for bad JSON, the line and column.
    Only a regular file is opened (a FIFO or a device is refused without blocking), and at most
    JSON_FILE_LIMIT bytes are read."""
    from core.safefs import NotRegularFile, read_regular

    try:
        raw = read_regular(path, JSON_FILE_LIMIT + 1)
    except FileNotFoundError:
        raise SettingsError(path, "", "file not found" + missing_hint) from None
    except NotRegularFile as e:
        raise SettingsError(path, "", f"is {e.strerror.split(',')[0]}; expected a JSON file") from None
    except OSError as e:
        raise SettingsError(path, "", f"cannot read: {e.strerror or e}") from None
    if len(raw) > JSON_FILE_LIMIT:
        raise SettingsError(path, "", f"larger than {JSON_FILE_LIMIT // (1024 * 1024)} MiB; expected a JSON file")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise SettingsError(path, "", f"cannot read: not UTF-8 text (byte {e.start})") from None
    except RecursionError:
        raise SettingsError(path, "", "invalid JSON: nested too deeply") from None
    except json.JSONDecodeError as e:
        raise SettingsError(path, f"line {e.lineno} column {e.colno}", f"invalid JSON: {e.msg}") from None


def load_registry(path: str, project_root: str) -> Registry:
    """Read a models_config.json. Raises SettingsError (one line) when it cannot be used."""
    path = os.path.abspath(path)
    project_root = os.path.abspath(project_root)
    data = read_json(path, missing_hint=" (pass --models-config FILE)")
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise SettingsError(path, "models", "expected a top-level object with a \"models\" object")
    repos = {}
    for name, r in data["models"].items():
        where = f"models.{name}"
        if not isinstance(r, dict):
            raise SettingsError(path, where, "expected an object")
        for key in ("path", "train_script"):
            if not isinstance(r.get(key), str):
                raise SettingsError(path, f"{where}.{key}", "expected a string")
        models = r.get("models")
        if not (isinstance(models, list) and all(isinstance(m, str) for m in models)):
            raise SettingsError(path, f"{where}.models", "expected a list of model names")
        requires = r.get("requires") or {}
        if not isinstance(requires, dict):
            raise SettingsError(path, f"{where}.requires", "expected an object: model name (or \"*\") -> list of needs")
        for model, needs in requires.items():
            if model != "*" and model not in models:
                raise SettingsError(path, f"{where}.requires.{model}", f"unknown model; this repo has {', '.join(models)}")
            if not isinstance(needs, list):
                raise SettingsError(path, f"{where}.requires.{model}", "expected a list of needs")
            for i, d in enumerate(needs):
                _check_need(path, f"{where}.requires.{model}[{i}]", d)
        repo_path = os.path.expanduser(r["path"])
        patterns = (r.get("performance_metrics") or {}).get("log_patterns") or {}
        repos[name] = RepoSpec(
            name=name,
            path=os.path.normpath(repo_path if os.path.isabs(repo_path) else os.path.join(project_root, repo_path)),
            train_script=r["train_script"],
            models=tuple(models),
            model_flag=r.get("model_flag"),
            required_args=_required_args(path, f"{where}.required_args", r.get("required_args")),
            hyperparams=_hyperparams(path, f"{where}.supported_hyperparams", r.get("supported_hyperparams", {})),
            log_patterns=dict(patterns) if isinstance(patterns, dict) else {},
            requires={k: tuple(v) for k, v in requires.items()},
            measure_energy=bool(r["measure_energy"]) if "measure_energy" in r else None,
        )
    return Registry(path=path, project_root=project_root, repos=repos)
