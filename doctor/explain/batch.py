"""Explaining a whole results tree: experiments grouped by run folder (siblings are compared
within a run), spread over worker processes for large batches."""
from __future__ import annotations

import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

from doctor.explain.model import BatchReport, Explanation
from doctor.explain.readers import DEFAULT_CAP, ExplainInputError, JsonRecord, find_experiments, read_experiment_json
from doctor.explain.siblings import RunContext, Sibling, model_reference, run_members, sibling
from doctor.explain.analyze import Analyzer

PARALLEL_MIN = 500  # experiments; below this a pool costs more than it saves


def _explain_runs(an: Analyzer, runs: Sequence[Tuple[str, List[str]]], single_folder: Optional[str]
                  ) -> List[Explanation]:
    out: List[Explanation] = []
    for run_folder, members in runs:
        recs = [(f, _RECORDS.get(f) or read_experiment_json(f)) for f in members]
        if single_folder and recs[0][1].data is None:
            raise ExplainInputError(f"{recs[0][1].path}: {recs[0][1].error}")
        context = recs
        if single_folder:  # one experiment asked for: its run folder's other experiments are still evidence
            context = recs + [(f, read_experiment_json(f)) for f in run_members(run_folder) if f != single_folder]
        ctx = RunContext(run_folder, [_SIBLINGS.get(f) or sibling(f, r) for f, r in context])
        for f, r in recs:
            out.append(an.explain(f, r, ctx))
    return out


_WORKER_ANALYZER: Optional[Analyzer] = None
# Every experiment.json of the batch, read once before the work is spread (forked workers share it).
_RECORDS: Dict[str, JsonRecord] = {}
_SIBLINGS: Dict[str, Sibling] = {}


def _worker_init(registry, cap, rerun_path, reference) -> None:
    global _WORKER_ANALYZER
    _WORKER_ANALYZER = Analyzer(registry, cap, rerun_path, reference)


def _worker(runs) -> List[Explanation]:
    return _explain_runs(_WORKER_ANALYZER, runs, None)


def default_jobs(n_experiments: int, n_runs: int) -> int:
    if n_experiments < PARALLEL_MIN or n_runs < 2:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus, n_runs))


def explain_path(path: str, registry: Optional[str] = None, cap: int = DEFAULT_CAP,
                 rerun_path: Optional[str] = None, jobs: Optional[int] = None) -> BatchReport:
    """Explain every experiment under PATH. Raises readers.ExplainInputError for an unusable PATH.

    Large batches are spread over `jobs` worker processes, one run folder at a time (siblings
    are compared within a run folder, so a run never needs two workers)."""
    t0 = time.perf_counter()
    folders = find_experiments(path)
    single = folders[0] if len(folders) == 1 and os.path.abspath(path) == folders[0] else None
    by_run: Dict[str, List[str]] = {}
    for f in folders:
        by_run.setdefault(os.path.dirname(f), []).append(f)
    runs = list(by_run.items())
    _RECORDS.update((f, read_experiment_json(f)) for f in folders)
    _SIBLINGS.update((f, sibling(f, r)) for f, r in _RECORDS.items())
    ref = model_reference(_SIBLINGS.values())
    jobs = default_jobs(len(folders), len(runs)) if jobs is None else max(1, min(jobs, len(runs)))
    try:
        out = _explain_all(runs, single, jobs, (registry, cap, rerun_path, ref), len(folders))
    finally:
        _RECORDS.clear()
        _SIBLINGS.clear()
    return BatchReport(os.path.abspath(path), tuple(by_run), tuple(out), time.perf_counter() - t0)


def _explain_all(runs, single: Optional[str], jobs: int, init: tuple, n_folders: int) -> List[Explanation]:
    if jobs == 1:
        out = _explain_runs(Analyzer(*init), runs, single)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # Chunks of whole run folders, about 4 per worker, in order.
        size = max(1, n_folders // (jobs * 4))
        chunks, cur, n = [], [], 0
        for run in runs:
            cur.append(run)
            n += len(run[1])
            if n >= size:
                chunks.append(cur)
                cur, n = [], 0
        if cur:
            chunks.append(cur)
        ctx = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init, initargs=init) as pool:
            out = [e for part in pool.map(_worker, chunks) for e in part]
    return out
