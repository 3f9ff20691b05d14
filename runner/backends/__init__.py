"""The runner's backends, one line each: name -> "module:class" (imported only when chosen).

Adding a backend: one module under runner/backends/ implementing `base.Backend` (start, and the
`Handle` it returns: wait, terminate, kill, cleanup, record), one line below, one test. The name
becomes a choice of `mutation-run --backend`.
"""
from __future__ import annotations

from typing import Tuple

BACKENDS = {
    "local": "runner.backends.local:LocalBackend",
    "slurm": "runner.backends.slurm:SlurmBackend",
}
DEFAULT = "local"


def names() -> Tuple[str, ...]:
    return tuple(BACKENDS)


def get(name: str = DEFAULT, **options):
    """An instance of the backend called `name` (KeyError for an unknown name)."""
    import importlib

    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)(**options)
