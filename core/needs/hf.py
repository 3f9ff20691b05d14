"""Hugging Face Hub files: `{"hf": "org/name", "files": [...], "revision": "main"}`."""
from __future__ import annotations

import os
from typing import Any, List, Mapping, Tuple

from core.envpath import expanduser, expandvars
from core.needs.base import Cached, NeedKind, Resolved, non_empty_string

DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "ON", "YES", "TRUE"}


def hf_cache_dir(env: Mapping[str, str], home: str) -> str:
    """The Hugging Face Hub cache the process with `env` and `home` (its HOME) will use.

    HF_HUB_CACHE > HUGGINGFACE_HUB_CACHE > $HF_HOME/hub > $XDG_CACHE_HOME/huggingface/hub >
    ~/.cache/huggingface/hub, exactly as huggingface_hub.constants computes it at import time
    (`~` and `$VAR` expanded in HF_HOME and in the final value; made absolute against our cwd).
    """
    default_home = os.path.join(expanduser("~", home), ".cache")
    hf_home = expandvars(expanduser(env.get("HF_HOME", os.path.join(env.get("XDG_CACHE_HOME", default_home),
                                                                     "huggingface")), home), env)
    legacy = env.get("HUGGINGFACE_HUB_CACHE", os.path.join(hf_home, "hub"))
    return os.path.abspath(expandvars(expanduser(env.get("HF_HUB_CACHE", legacy), home), env))


def is_offline(env: Mapping[str, str]) -> bool:
    """huggingface_hub's offline switch: HF_HUB_OFFLINE, else TRANSFORMERS_OFFLINE, truthy."""
    value = env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE")
    return bool(value) and value.upper() in _TRUE


def endpoint(env: Mapping[str, str]) -> str:
    """The Hub the launched process contacts: HF_ENDPOINT, else huggingface.co."""
    return (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


class HubFiles(NeedKind):
    """Files of a Hub repo, loaded through huggingface_hub: cached under the HF cache; when the Hub
    is unreachable huggingface_hub falls back to the cache (measured, CONTEXT §1)."""

    name = "hf"
    store = "hf"
    cache_vars = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "HOME")
    downloaded = inspected = True
    network = "hub"
    falls_back = True

    def validate(self, spec: Mapping[str, Any]) -> List[Tuple[str, str]]:
        problems = non_empty_string(spec, self.name)
        files = spec.get("files")
        if not (isinstance(files, list) and files and all(isinstance(x, str) for x in files)):
            problems.append(("files", "expected a non-empty list of file names"))
        return problems

    def key(self, spec: Mapping[str, Any], repo_dir: str, home: str) -> str:
        files = ",".join(spec.get("files") or [])
        rev = spec.get("revision") or "main"
        return f"hf:{spec['hf']}@{rev}:{files}"

    def resolve(self, spec: Mapping[str, Any], cached: Cached) -> Resolved:
        return Resolved("hf", repo_id=spec["hf"], revision=spec.get("revision") or "main", files=tuple(spec["files"]))

    def cache_dir(self, env: Mapping[str, str], home: str) -> str:
        return hf_cache_dir(env, home)


KIND = HubFiles()
