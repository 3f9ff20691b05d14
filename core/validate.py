"""One validator for the settings file and the model registry, shared by the doctor and the runner.

`check_inputs()` reads both files safely (a regular file only, a bounded read, strict JSON: no
NaN/Infinity, no absurd integers, no NUL or lone surrogate in a string, bounded nesting) and
checks every value the runner will use: types of hyperparameter values, ranges, `mutate`, `mode`,
`model_flag`, `required_args` (shell words), `log_patterns` (regular expressions), and the size of
the plan (`max_experiments`). Each problem is one line: file, JSON path, what was expected.

Problems are `fatal` when the files cannot be loaded with them (the runner and the doctor refuse
the files with one line per problem, exit 2); the others concern one settings entry, which the
doctor blocks (finding `settings.bad-value`) and the runner refuses to start with.
"""
from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence, Tuple

from core.registry import SettingsError

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64
MAX_INT_DIGITS = 30
MAX_EXPERIMENTS = 10000  # default of --max-experiments
MAX_RETRIES = 100
NUMERIC = ("int", "float")
DISTRIBUTIONS = ("uniform", "log_uniform")


@dataclass(frozen=True)
class Problem:
    """One invalid value: the file, its JSON path, what was expected; `entry`: the settings entry
    it belongs to (None: the whole file); `fatal`: the file cannot be used at all with it."""

    file: str
    path: str
    expected: str
    fatal: bool = True
    entry: Optional[int] = None

    def line(self) -> str:
        return f"{self.file}: {self.path}: {self.expected}"


class InvalidInput(SettingsError):
    """The inputs cannot be used: one line per problem."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = tuple(problems)
        first = self.problems[0]
        super().__init__(first.file, first.path, first.expected)

    def __str__(self) -> str:
        return "\n".join(p.line() for p in self.problems)


class _Odd:
    """A JSON literal we refuse, kept as a marker so that the walk can name its path."""

    def __init__(self, why: str):
        self.why = why


def _int(text: str):
    digits = len(text.lstrip("-"))
    return _Odd(f"a {digits}-digit integer; expected a number of reasonable size") if digits > MAX_INT_DIGITS else int(text)


def _float(text: str):
    x = float(text)
    return x if math.isfinite(x) else _Odd(f"{text} is not a finite number")


def load_json(path: str, limit: int = MAX_FILE_BYTES) -> Tuple[Any, List[Problem]]:
    """(data, problems) of a JSON file; data is None when it cannot be read at all."""
    from core.safefs import NotRegularFile, read_regular

    try:
        raw = read_regular(path, limit + 1)
    except FileNotFoundError:
        return None, [Problem(path, "$", "file not found")]
    except NotRegularFile as e:
        return None, [Problem(path, "$", f"{e.strerror}; expected a JSON file")]
    except OSError as e:
        return None, [Problem(path, "$", f"cannot read: {e.strerror or e}")]
    if len(raw) > limit:
        return None, [Problem(path, "$", f"larger than {limit // (1024 * 1024)} MiB; expected a JSON settings file")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, [Problem(path, "$", f"not UTF-8 text (byte {e.start})")]
    try:
        data = json.loads(text, parse_int=_int, parse_float=_float,
                          parse_constant=lambda c: _Odd(f"{c} is not a number JSON allows"))
    except RecursionError:
        return None, [Problem(path, "$", f"nested too deeply; expected at most {MAX_DEPTH} levels")]
    except json.JSONDecodeError as e:
        return None, [Problem(path, f"line {e.lineno} column {e.colno}", f"invalid JSON: {e.msg}")]
    problems = list(_walk(path, data, "$", 0))
    return (None if problems else data), problems


def _walk(file: str, value: Any, where: str, depth: int) -> Iterator[Problem]:
    """Literals we refuse, strings that cannot be passed on (NUL, lone surrogates), deep nesting."""
    if depth > MAX_DEPTH:
        shown = where if len(where) <= 100 else where[:100] + "..."
        yield Problem(file, shown, f"nested too deeply; expected at most {MAX_DEPTH} levels")
        return
    if isinstance(value, _Odd):
        yield Problem(file, where, value.why)
    elif isinstance(value, str):
        why = _bad_text(value)
        if why:
            yield Problem(file, where, why)
    elif isinstance(value, dict):
        for k, v in value.items():
            why = _bad_text(k)
            if why:
                yield Problem(file, where, f"a key with {why}")
                continue
            yield from _walk(file, v, k if where == "$" else f"{where}.{k}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(file, v, f"{'' if where == '$' else where}[{i}]", depth + 1)


def _bad_text(s: str) -> str:
    if "\0" in s:
        return "a NUL character; expected plain text"
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"a lone surrogate (\\u{ord(s[e.start]):04x}); expected plain text"
    return ""


def _shown(name: str, value: Any, limit: int) -> str:
    """A value quoted in a message: cut short, and masked when its name or shape says it is a secret."""
    from core.secrets import mask

    return mask(name, str(value)[:limit])


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _kind(x: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(x), "a number")


# -- the registry -------------------------------------------------------------------------------------
def registry_problems(file: str, data: Any) -> List[Problem]:
    """Every value of a models_config.json the runner will use."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        return [Problem(file, "models", "expected a top-level object with a \"models\" object")]
    out: List[Problem] = []
    for name, r in data["models"].items():
        where = f"models.{name}"
        if not isinstance(r, dict):
            out.append(Problem(file, where, f"expected an object, got {_kind(r)}"))
            continue
        for key in ("path", "train_script"):
            if not (isinstance(r.get(key), str) and r[key].strip()):
                out.append(Problem(file, f"{where}.{key}", "expected a non-empty string"))
        models = r.get("models")
        if not (isinstance(models, list) and all(isinstance(m, str) and m for m in models)):
            out.append(Problem(file, f"{where}.models", "expected a list of model names"))
        if r.get("model_flag") is not None and not (isinstance(r["model_flag"], str) and r["model_flag"]):
            out.append(Problem(file, f"{where}.model_flag", f"expected a flag string such as \"-n\", got {_kind(r['model_flag'])}"))
        out += _required_args(file, f"{where}.required_args", r.get("required_args"))
        out += _hyperparams(file, f"{where}.supported_hyperparams", r.get("supported_hyperparams", {}))
        out += _metrics(file, f"{where}.performance_metrics", r.get("performance_metrics"))
    return out


def _required_args(file: str, where: str, raw: Any) -> List[Problem]:
    if raw is None:
        return []
    items = raw.items() if isinstance(raw, dict) else enumerate(raw) if isinstance(raw, list) else [(None, raw)]
    out = []
    for key, value in items:
        at = where if key is None else (f"{where}.{key}" if isinstance(raw, dict) else f"{where}[{key}]")
        if isinstance(raw, list) and (_is_num(value) or isinstance(value, str)):
            continue  # list items are passed as words, as they are
        if not (isinstance(value, str) or _is_num(value)):
            out.append(Problem(file, at, f"expected a string of arguments, got {_kind(value)}"))
            continue
        try:
            shlex.split(str(value))
        except ValueError as e:
            out.append(Problem(file, at, f"{e} in {_shown(str(key), value, 60)!r}; expected shell words (balanced quotes)"))
    return out


def _hyperparams(file: str, where: str, raw: Any) -> List[Problem]:
    if not isinstance(raw, dict):
        return [Problem(file, where, "expected an object of hyperparameter definitions")]
    out = []
    for name, h in raw.items():
        at = f"{where}.{name}"
        if not isinstance(h, dict) or not (isinstance(h.get("flag"), str) and h["flag"]):
            out.append(Problem(file, at, "expected an object with a \"flag\" string"))
            continue
        kind = h.get("type", "float")
        if not isinstance(kind, str):
            out.append(Problem(file, f"{at}.type", "expected \"int\", \"float\" or another type name"))
            continue
        if h.get("distribution", "uniform") not in DISTRIBUTIONS:
            out.append(Problem(file, f"{at}.distribution", "expected \"uniform\" or \"log_uniform\""))
        if kind in NUMERIC and h.get("default") is not None and not _is_num(h["default"]):
            out.append(Problem(file, f"{at}.default", f"expected a number, got {_kind(h['default'])}"))
        zp = h.get("zero_probability", 0.0)
        if not (_is_num(zp) and 0 <= zp <= 1):
            out.append(Problem(file, f"{at}.zero_probability", "expected a number from 0 to 1"))
        out += _range(file, f"{at}.range", kind, h.get("range"))
    return out


def _range(file: str, at: str, kind: str, rng: Any) -> List[Problem]:
    if rng is None:
        return []
    if not (isinstance(rng, list) and len(rng) == 2 and all(_is_num(x) for x in rng)):
        return [Problem(file, at, "expected [low, high] with two numbers")]
    low, high = rng
    if low > high:
        return [Problem(file, at, f"low {low:g} is above high {high:g}; expected [low, high]")]
    if kind == "int" and math.ceil(low) > math.floor(high):
        return [Problem(file, at, f"no whole number between {low:g} and {high:g}; expected an int range such as [1, 2]")]
    return []


def _metrics(file: str, where: str, raw: Any) -> List[Problem]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        return [Problem(file, where, f"expected an object with \"log_patterns\", got {_kind(raw)}")]
    patterns = raw.get("log_patterns")
    if patterns is None:
        return []
    if not isinstance(patterns, dict):
        return [Problem(file, f"{where}.log_patterns", f"expected an object: metric name -> regular expression, got {_kind(patterns)}")]
    out = []
    for name, rx in patterns.items():
        if not isinstance(rx, str):
            out.append(Problem(file, f"{where}.log_patterns.{name}", f"expected a regular expression string, got {_kind(rx)}"))
            continue
        try:
            re.compile(rx)
        except re.error as e:
            out.append(Problem(file, f"{where}.log_patterns.{name}", f"invalid regular expression ({e}); expected a pattern with one group"))
    return out


# -- the settings file --------------------------------------------------------------------------------
def _runs_value(file: str, where: str, obj: dict, out: List[Problem]) -> Optional[int]:
    v = obj.get("runs_per_config")
    if v is None:
        return None
    if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
        out.append(Problem(file, f"{where}.runs_per_config" if where != "$" else "runs_per_config",
                           f"expected a whole number >= 1, got {v if _is_num(v) else _kind(v)}"))
        return None
    return v


def settings_problems(file: str, data: Any, registry: Any = None,
                      max_experiments: int = MAX_EXPERIMENTS) -> List[Problem]:
    """Every value of a settings file the runner will use, and the plan's size; `registry` is the
    parsed models_config.json (for the hyperparameters' types)."""
    entries = data if isinstance(data, list) else data.get("experiments") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return [Problem(file, "experiments", "expected a list of experiment entries")]
    out: List[Problem] = []
    top = data if isinstance(data, dict) else {}
    top_runs = _runs_value(file, "$", top, out) or 1
    mr = top.get("max_retries")
    if mr is not None and not (isinstance(mr, int) and not isinstance(mr, bool) and 0 <= mr <= MAX_RETRIES):
        out.append(Problem(file, "max_retries", f"expected a whole number from 0 to {MAX_RETRIES}"))
    repos = (registry or {}).get("models") if isinstance(registry, dict) else None
    total = 0
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            continue  # the settings lint names it (settings.bad-entry)
        where = f"experiments[{i}]"
        mode = e.get("mode")
        if mode is not None and not isinstance(mode, str):
            out.append(Problem(file, f"{where}.mode", f"expected \"default\", \"mutation\" or \"parallel\", got {_kind(mode)}",
                               fatal=False, entry=i))
        runs = _runs_value(file, where, e, out)
        sides = [(where, e)]
        if isinstance(e.get("foreground"), dict) or isinstance(e.get("background"), dict):
            sides = [(f"{where}.{k}", e[k]) for k in ("foreground", "background") if isinstance(e.get(k), dict)]
        for at, side in sides:
            side_runs = _runs_value(file, at, side, out) if side is not e else None
            runs = runs or (side_runs if at.endswith("foreground") else None)
            out += _side(file, at, side, i, repos)
        total += runs or top_runs
    if total > max_experiments:
        out.append(Problem(file, "runs_per_config", f"the plan has {total} experiments, more than --max-experiments "
                                                    f"{max_experiments}; expected a smaller runs_per_config"))
    return out


def _side(file: str, where: str, side: dict, entry: int, repos: Any) -> List[Problem]:
    out = []
    mutate = side.get("mutate")
    if mutate is not None and not isinstance(mutate, str) and not (
            isinstance(mutate, list) and all(isinstance(m, str) for m in mutate)):
        out.append(Problem(file, f"{where}.mutate", "expected a list of hyperparameter names (strings)", entry=entry))
    hp = side.get("hyperparameters")
    if not isinstance(hp, dict):
        return out  # absent, or named by the settings lint
    spec = repos.get(side.get("repo")) if isinstance(repos, dict) and isinstance(side.get("repo"), str) else None
    defs = spec.get("supported_hyperparams") if isinstance(spec, dict) else None
    for name, value in hp.items():
        at = f"{where}.hyperparameters.{name}"
        kind = defs[name].get("type", "float") if isinstance(defs, dict) and isinstance(defs.get(name), dict) else None
        if isinstance(value, (dict, list)):
            out.append(Problem(file, at, f"expected a single value, got {_kind(value)}", fatal=False, entry=entry))
        elif kind in NUMERIC and value is not None and not _is_num(value):
            out.append(Problem(file, at, f"expected {'a whole number' if kind == 'int' else 'a number'} ({kind}), "
                                         f"got {_kind(value)} {_shown(name, value, 40)!r}", fatal=False, entry=entry))
    return out


def check_inputs(settings_path: Optional[str], registry_path: str,
                 max_experiments: int = MAX_EXPERIMENTS) -> List[Problem]:
    """Both files read and checked; every problem found (fatal ones first)."""
    registry, problems = load_json(registry_path)
    if registry is not None:
        problems = registry_problems(registry_path, registry)
    if settings_path:
        settings, more = load_json(settings_path)
        if settings is not None:
            more = settings_problems(settings_path, settings, registry, max_experiments)
        problems += more
    return sorted(problems, key=lambda p: not p.fatal)


def refuse_fatal(problems: Sequence[Problem]) -> None:
    """Raise InvalidInput when any problem makes the files unusable."""
    fatal = [p for p in problems if p.fatal]
    if fatal:
        raise InvalidInput(fatal)
