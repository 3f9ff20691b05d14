"""Past runs as mutation.py's deduplication sees them: historical CSVs and earlier results folders.

A combination's key is its (name, value) pairs sorted by name, each value written the way its
registry type prints it (`%.6f` for floats, whole numbers for ints), plus the run's mode:
`parallel` when the experiment id ends in `_parallel`, else `nonparallel`. A past run counts for a
new draw of the same repository and model; only the parameters being mutated are compared.

Where this differs from mutation.py, it errs towards never paying twice for the same run: an int
read back from a CSV as `10.0` is the same value as a drawn `10` (mutation.py's key keeps them
apart), and a parallel row of `raw_data.csv`, whose values sit in `fg_*` columns, counts too.
"""
from __future__ import annotations

import csv
import glob
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

PARALLEL, NONPARALLEL = "parallel", "nonparallel"
Key = Tuple[Tuple[str, str], ...]


def run_mode(experiment_id: str) -> str:
    """`parallel` or `nonparallel`, from the id alone (as mutation.py decides it)."""
    return PARALLEL if str(experiment_id).endswith("_parallel") else NONPARALLEL


def normalize(value: Any, kind: str = "") -> str:
    """One value as the key holds it: by the registry type when known, else by the Python type."""
    try:
        if kind == "int":
            return str(int(round(float(value))))
        if kind == "float" or isinstance(value, float):
            return "%.6f" % float(value)
    except (TypeError, ValueError):
        pass
    return str(value)


def combo_key(values: Mapping[str, Any], kinds: Mapping[str, str], mode: str) -> Key:
    """The deduplication key of one combination run in `mode`."""
    return (("__mode__", mode),) + tuple(sorted((n, normalize(v, kinds.get(n, ""))) for n, v in values.items()))


@dataclass(frozen=True)
class PastRun:
    """One run already paid for: repository, model, mode and its hyperparameter values."""

    repo: str
    model: str
    mode: str
    values: Mapping[str, Any]


class HistoryError(Exception):
    """A history file that cannot be used: its path and why, in one line."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


def _row_run(row: Mapping[str, str]) -> Optional[PastRun]:
    prefix = "" if (row.get("repository") or "").strip() else "fg_"
    repo, model = (row.get(prefix + "repository") or "").strip(), (row.get(prefix + "model") or "").strip()
    if not repo or (row.get("status") or "").strip() == "blocked":
        return None  # nothing ran (our blocked records) or a row with no repository
    head = prefix + "hyperparam_"
    values = {k[len(head):]: v.strip() for k, v in row.items()
              if k and k.startswith(head) and isinstance(v, str) and v.strip()}
    return PastRun(repo, model, run_mode(row.get("experiment_id") or ""), values) if values else None


def read_history_csv(path: str) -> List[PastRun]:
    """The past runs of one CSV in mutation.py's summary format. Raises HistoryError."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = set(reader.fieldnames or ())
            if "experiment_id" not in columns or not ({"repository", "fg_repository"} & columns):
                raise HistoryError(path, "not a results CSV (expected the columns experiment_id and repository)")
            return [r for r in (_row_run(row) for row in reader) if r is not None]
    except FileNotFoundError:
        raise HistoryError(path, "file not found") from None
    except IsADirectoryError:
        raise HistoryError(path, "is a folder; expected a CSV file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise HistoryError(path, f"cannot read: {e}") from None


def _record_run(path: str) -> Optional[PastRun]:
    try:
        with open(path, encoding="utf-8") as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("status") == "blocked":
        return None
    user = rec.get("foreground") if isinstance(rec.get("foreground"), dict) else rec
    hp = user.get("hyperparameters")
    if not isinstance(hp, dict) or not hp or not isinstance(user.get("repository"), str):
        return None
    return PastRun(user["repository"], str(user.get("model", "")),
                   run_mode(rec.get("experiment_id") or os.path.basename(os.path.dirname(path))), dict(hp))


def read_results(results_dir: str) -> List[PastRun]:
    """Past runs under a results folder (`run_*/summary.csv`, else its `*/experiment.json`).

    Reads folders written by mutation.py and by mutation-run alike; unreadable files are skipped
    (they are results, not settings: a half-written one must not stop a batch)."""
    runs: List[PastRun] = []
    for run_dir in sorted(glob.glob(os.path.join(glob.escape(results_dir), "run_*"))):
        summary = os.path.join(run_dir, "summary.csv")
        try:
            runs += read_history_csv(summary)
            continue
        except HistoryError:
            pass
        for rec in sorted(glob.glob(os.path.join(glob.escape(run_dir), "*", "experiment.json"))):
            r = _record_run(rec)
            if r is not None:
                runs.append(r)
    return runs


def historical_csvs(top: Mapping[str, Any], project_root: str) -> List[Tuple[str, str]]:
    """(as written, absolute path) of each `historical_csvs` entry when `use_deduplication` is on.

    Relative paths start at the project root (mutation.py joins them to the folder that holds
    its `mutation/` package)."""
    if not top.get("use_deduplication"):
        return []
    given = top.get("historical_csvs") or []
    if isinstance(given, str):
        given = [given]
    if not isinstance(given, list):
        return []
    return [(g, os.path.normpath(os.path.join(project_root, os.path.expanduser(g))))
            for g in given if isinstance(g, str) and g]


@dataclass(frozen=True)
class HistorySource:
    """One file or folder history was read from, how many past runs it gave, or why it gave none."""

    path: str
    runs: int = 0
    problem: str = ""


@dataclass
class History:
    """Past runs by repository and model, with the keys of the parameters a draw mutates."""

    runs: Sequence[PastRun] = ()
    sources: Tuple[HistorySource, ...] = ()
    _by_model: Dict[Tuple[str, str], List[PastRun]] = field(default_factory=dict, repr=False)
    _keys: Dict[Tuple, Set[Key]] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        for r in self.runs:
            self._by_model.setdefault((r.repo, r.model), []).append(r)

    def keys(self, repo: str, model: str, names: Sequence[str], kinds: Mapping[str, str]) -> Set[Key]:
        """Keys of the past runs of repo/model, restricted to `names` (the parameters mutated)."""
        memo = (repo, model, tuple(names))
        if memo not in self._keys:
            keys = set()
            for r in self._by_model.get((repo, model), ()):
                part = {n: r.values[n] for n in names if n in r.values}
                if part:
                    keys.add(combo_key(part, kinds, r.mode))
            self._keys[memo] = keys
        return self._keys[memo]


def load_history(top: Mapping[str, Any], project_root: str, results_dirs: Iterable[str] = ()) -> Optional[History]:
    """The history a settings file asks for (None when `use_deduplication` is off): its
    `historical_csvs` and the earlier results folders of the project."""
    if not top.get("use_deduplication"):
        return None
    runs: List[PastRun] = []
    sources: List[HistorySource] = []
    for _given, path in historical_csvs(top, project_root):
        try:
            got = read_history_csv(path)
        except HistoryError as e:
            sources.append(HistorySource(path, problem=e.reason))
            continue
        runs += got
        sources.append(HistorySource(path, len(got)))
    for d in dict.fromkeys(os.path.abspath(d) for d in results_dirs):
        if os.path.isdir(d):
            got = read_results(d)
            runs += got
            sources.append(HistorySource(d, len(got)))
    return History(runs=runs, sources=tuple(sources))
