"""The need-kind registry: the only list of kinds a registry's `requires` may declare.

Each kind is one adapter module (core/needs/<kind>.py, exposing `KIND`, a core.needs.base.NeedKind)
named here by one line; modules are imported on first use. Every set of kinds the rest of the
project needs (served by the Hub, downloaded into a cache, inspected on disk) is derived from the
adapters' attributes, never listed again elsewhere.

Adding a kind: write core/needs/<kind>.py, add one line to KINDS, add one test.
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Dict, Mapping, Optional, Tuple

from core.needs.base import HF_BIN, HF_SAFE, NeedKind, Resolved, ResolveError, local_path  # noqa: F401 - re-exported

KINDS: Dict[str, str] = {
    "timm": "core.needs.timm",
    "torchvision": "core.needs.torchvision",
    "hf": "core.needs.hf",
    "path": "core.needs.path",
    "python": "core.needs.python",
    "gpu": "core.needs.gpu",
    "gpu_memory_gb": "core.needs.gpu_memory_gb",
    "url": "core.needs.url",
}


def adapter(kind: str) -> NeedKind:
    """The adapter of `kind` (KeyError for an unknown kind)."""
    return importlib.import_module(KINDS[kind]).KIND


def kinds(**attrs) -> Tuple[str, ...]:
    """The registered kinds whose adapter has every attribute value given: kinds(downloaded=True)."""
    return tuple(k for k in KINDS if all(getattr(adapter(k), a) == v for a, v in attrs.items()))


def need_kind(spec: Mapping[str, Any]) -> str:
    """The kind a declaration names (exactly one registered key), else ""."""
    found = [k for k in KINDS if k in spec]
    return found[0] if len(found) == 1 else ""


def key_for(kind: str, spec: Mapping[str, Any], repo_dir: str = "", home: Optional[str] = None) -> str:
    """The key of a need (what core.model.Need.key returns), for code that holds only the declaration.

    `home` expands `~` in local paths (default: this process's HOME). Unknown kinds get `kind:value`.
    """
    home = os.path.expanduser("~") if home is None else home
    if kind not in KINDS:
        return f"{kind}:{spec.get(kind)}"
    return adapter(kind).key(spec, repo_dir, home)


def store_dirs(env: Mapping[str, str], home: str) -> Dict[str, str]:
    """The cache folder of every store ("hf", "torchhub", ...) for a process with `env` and HOME `home`."""
    out = {}
    for k in KINDS:
        a = adapter(k)
        if a.store:
            out[a.store] = a.cache_dir(env, home)
    return out


def cache_dirs(env: Mapping[str, str], home: str) -> Dict[str, str]:
    """The cache folder of every kind that downloads into one, for a process with `env` and HOME `home`."""
    dirs = {k: adapter(k).cache_dir(env, home) for k in KINDS}
    return {k: d for k, d in dirs.items() if d}


def __getattr__(name: str):
    """HUB_KINDS, DOWNLOADED_KINDS and CACHE_KINDS, derived from the adapters (the registry as it is now)."""
    derived = {
        "HUB_KINDS": dict(network="hub", falls_back=True),  # served from the Hugging Face Hub
        "DOWNLOADED_KINDS": dict(downloaded=True),  # a library downloads them into a cache
        "CACHE_KINDS": dict(inspected=True),  # the cache group looks for them on disk
    }
    if name in derived:
        return kinds(**derived[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
