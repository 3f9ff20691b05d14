"""What every need kind shares: the resolution record, its error, and the adapter base class.

An adapter (one module per kind under core/needs/) owns everything that differs between kinds:
how a declaration is validated, its key, how a name resolves to files, the cache folder the
launched process uses (and the variables that move it), what to inspect, which host a load
contacts, whether a load falls back to the cache when that host is unreachable, and the job
that prefetches it. Nothing here imports a heavy library.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

HF_SAFE = "model.safetensors"
HF_BIN = "pytorch_model.bin"

# A memo lookup: cached(key, compute) -> dict; compute() may raise ResolveError.
Cached = Callable[[str, Callable[[], dict]], dict]


class ResolveError(Exception):
    """A model name the library does not know (a registry mistake), with a one-line reason."""


@dataclass(frozen=True)
class Resolved:
    """Where a need's files live: a Hub repo with candidate files in the order the library tries
    them, or a torch hub checkpoint file name (with the URL it is downloaded from).

    `source` names the store (the cache folder kind) that holds the files: "hf" or "torchhub".
    """

    source: str
    repo_id: str = ""
    revision: str = "main"
    files: Tuple[str, ...] = ()
    any_of: bool = False  # True: the library falls back from one file to the next (timm)
    filename: str = ""
    url: str = ""


def library_version(pkg: str) -> str:
    """The installed version of `pkg` (memo keys change with it), without importing it."""
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "absent"


def local_path(spec: Mapping[str, Any], repo_dir: str, home: str) -> str:
    """A `path` or `python` need's absolute path as a process whose HOME is `home` sees it (a train.sh
    run under sudo expands `~` to /root); relative paths start at the repo folder."""
    import os.path

    from core.envpath import expanduser

    p = expanduser(str(spec.get("path") or spec.get("python") or ""), home)
    return os.path.normpath(p if os.path.isabs(p) else os.path.join(repo_dir, p))


def non_empty_string(spec: Mapping[str, Any], name: str) -> List[Tuple[str, str]]:
    """The validation problem of a field that must be a non-empty string, or none."""
    value = spec.get(name)
    return [] if isinstance(value, str) and value else [(name, "expected a non-empty string")]


class NeedKind:
    """The adapter of one need kind. Subclasses set the class attributes and override what differs.

    - `name`: the key that declares the need in a registry's `requires` (`{"timm": "hrnet_w18"}`).
    - `store`: the cache folder this kind owns ("hf", "torchhub"), if any; `cache_vars` the
      variables that move it.
    - `downloaded`: a library downloads it into a cache at run time; `inspected`: the cache group
      looks for it on disk.
    - `network`: the endpoint kind (core.netprobe) a load contacts when the files are not cached;
      `falls_back`: True when the library uses the cache if that host is unreachable.
    """

    name = ""
    store: Optional[str] = None
    cache_vars: Tuple[str, ...] = ()
    downloaded = False
    inspected = False
    network: Optional[str] = None
    falls_back = False

    def validate(self, spec: Mapping[str, Any]) -> List[Tuple[str, str]]:
        """Problems of a declaration as (field, what was expected); empty when it is usable."""
        return non_empty_string(spec, self.name)

    def key(self, spec: Mapping[str, Any], repo_dir: str, home: str) -> str:
        """A stable, human-readable identity, used to deduplicate needs shared by experiments."""
        return f"{self.name}:{spec.get(self.name)}"

    def resolve(self, spec: Mapping[str, Any], cached: Cached) -> Resolved:
        """The files the library will open (memoised through `cached`); ResolveError if unknown."""
        raise ResolveError(f"{self.name} needs are not resolved to hub files")

    def cache_dir(self, env: Mapping[str, str], home: str) -> Optional[str]:
        """The cache folder a process with `env` and HOME `home` uses for this kind (None: no cache)."""
        return None

    def tasks(self, spec: Mapping[str, Any], path: str, resolved: Optional[Resolved],
              stores: Mapping[str, str]) -> List[Sequence]:
        """Inspection tasks (core.sudo.inspect_task) for one need; `path` is its local path as the
        launched process sees it, `stores` the store folders ("hf", "torchhub") to look in."""
        if resolved is None:
            return []
        if resolved.source == "torchhub":
            return [("torch", stores["torchhub"], resolved.filename)]
        return [("hf", stores["hf"], resolved.repo_id, f, resolved.revision) for f in resolved.files]

    def prefetch_job(self, resolved: Resolved, cache: str, mirror: Optional[str]) -> dict:
        """The download job (doctor.prefetch's subprocess input) that puts `resolved` into `cache`."""
        if resolved.source == "hf":
            return {"source": "hf", "repo_id": resolved.repo_id, "revision": resolved.revision,
                    "files": list(resolved.files), "any_of": resolved.any_of, "cache": cache}
        import re

        url = resolved.url
        if mirror:
            url = mirror.rstrip("/") + "/" + url.split("://", 1)[-1].split("/", 1)[-1]
        m = re.search(r"-([a-f0-9]{6,})\.", resolved.filename)
        return {"source": "torchhub", "url": url, "filename": resolved.filename, "cache": cache,
                "hash_prefix": m.group(1) if m else ""}
