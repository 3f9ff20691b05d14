"""The GPU between experiments: foreign processes holding memory, and waiting for memory to free.

Uses `core.gpu` (`query_gpus`, `foreign_processes`) when it is available; without it, or without
nvidia-smi, every function answers "nothing known" and the runner goes on.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, List, Optional, Tuple


def _api():
    try:
        from core.gpu import foreign_processes, query_gpus
    except ImportError:
        return None, None
    return query_gpus, foreign_processes


def snapshot(env=None, timeout: float = 5.0):
    query, _ = _api()
    if query is None:
        return None
    try:
        return query(env=env, timeout=timeout)
    except Exception:  # noqa: BLE001 - a broken nvidia-smi must not stop the batch
        return None


def foreign(snap, own_pids: Iterable[int]) -> List[dict]:
    """GPU processes that are not the runner's, as plain dicts for experiment.json."""
    _, fp = _api()
    if snap is None or fp is None:
        return []
    try:
        procs = fp(snap, set(own_pids))
    except Exception:  # noqa: BLE001
        return []
    out = []
    for p in procs:
        out.append({"pid": getattr(p, "pid", None), "user": getattr(p, "user", None),
                    "cmdline": getattr(p, "cmdline", None), "memory_mib": getattr(p, "memory_mib", None)})
    return out


def free_gib(snap) -> Optional[float]:
    """The most free memory on any one GPU, in GiB (None when unknown)."""
    if snap is None or not getattr(snap, "gpus", None):
        return None
    return max(g.memory_free_mib for g in snap.gpus) / 1024.0


def gpu_need_gb(experiment) -> Optional[float]:
    vals = [float(n.spec.get("gpu_memory_gb")) for n in experiment.needs if n.kind == "gpu_memory_gb"]
    return max(vals) if vals else None


def wait_for_memory(need_gb: float, max_wait: float, env=None, poll: float = 5.0,
                    stop: Optional[Callable[[], bool]] = None,
                    say: Optional[Callable[[str], None]] = None) -> Tuple[bool, float, Optional[float]]:
    """Poll until some GPU has `need_gb` GiB free or `max_wait` seconds pass.

    Returns (enough, seconds waited, last free GiB). Unknown memory (no nvidia-smi) counts as enough.
    """
    t0 = time.monotonic()
    told = False
    while True:
        free = free_gib(snapshot(env))
        if free is None or free >= need_gb:
            return True, time.monotonic() - t0, free
        waited = time.monotonic() - t0
        if waited >= max_wait or (stop is not None and stop()):
            return False, waited, free
        if say is not None and not told:
            say(f"waiting up to {max_wait:.0f} s for {need_gb:g} GiB of GPU memory ({free:.1f} GiB free)")
            told = True
        end = min(t0 + max_wait, time.monotonic() + poll)
        while time.monotonic() < end:
            if stop is not None and stop():
                break
            time.sleep(min(0.25, max(0.0, end - time.monotonic())))
