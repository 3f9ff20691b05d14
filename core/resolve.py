"""Model names to the files the libraries will open, through timm's and torchvision's own registries.

Resolution imports timm or torchvision (seconds), so results are memoised per library version in
`~/.cache/mutation-preflight/resolve.json`: a warm doctor run imports neither.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from typing import Tuple

from core.memo import JsonMemo
from core.model import Need

HF_SAFE = "model.safetensors"
HF_BIN = "pytorch_model.bin"


class ResolveError(Exception):
    """A model name the library does not know (a registry mistake), with a one-line reason."""


@dataclass(frozen=True)
class Resolved:
    """Where a need's files live: a Hub repo with candidate files in the order the library tries
    them, or a torch hub checkpoint file name (with the URL it is downloaded from)."""

    source: str  # "hf" or "torchhub"
    repo_id: str = ""
    revision: str = "main"
    files: Tuple[str, ...] = ()
    any_of: bool = False  # True: the library falls back from one file to the next (timm)
    filename: str = ""
    url: str = ""


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "absent"


class Resolver(JsonMemo):
    """Memoising resolver (a JsonMemo keyed by library version and name); thread-safe."""

    def _cached(self, key: str, compute):
        hit = self.get(key)
        if hit is None:
            try:
                hit = compute()
            except ResolveError as e:
                hit = {"error": str(e)}
            self.put(key, hit)
        if "error" in hit:
            raise ResolveError(hit["error"])
        return hit

    def resolve(self, need: Need) -> Resolved:
        if need.kind == "timm":
            name = need.spec["timm"] + (f".{need.spec['tag']}" if need.spec.get("tag") else "")
            v = self._cached(f"timm/{_version('timm')}/{name}", lambda: _timm_cfg(name))
            if v.get("hf_hub_id"):
                repo, _, rev = v["hf_hub_id"].partition("@")
                files = (v["hf_hub_filename"],) if v.get("hf_hub_filename") else (HF_SAFE, HF_BIN)
                return Resolved("hf", repo_id=repo, revision=rev or "main", files=files, any_of=len(files) > 1)
            return Resolved("torchhub", filename=os.path.basename(v["url"].split("?")[0]), url=v["url"])
        if need.kind == "torchvision":
            arch = need.spec["torchvision"]
            weights = need.spec.get("weights") or ("IMAGENET1K_V1" if need.spec.get("pretrained") else "DEFAULT")
            v = self._cached(f"torchvision/{_version('torchvision')}/{arch}/{weights}", lambda: _tv_weights(arch, weights))
            return Resolved("torchhub", filename=v["filename"], url=v["url"])
        if need.kind == "hf":
            return Resolved("hf", repo_id=need.spec["hf"], revision=need.spec.get("revision") or "main",
                            files=tuple(need.spec["files"]))
        raise ResolveError(f"{need.kind} needs are not resolved to hub files")

def _timm_cfg(name: str) -> dict:
    try:
        import timm.models
    except ImportError:
        raise ResolveError("timm is not installed where the doctor runs (pip install timm)") from None
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise ResolveError(f"timm does not know the model {name!r} (see timm.list_models(pretrained=True))")
    if not (cfg.hf_hub_id or cfg.url):
        raise ResolveError(f"timm model {name!r} has no pretrained weights source")
    return {"hf_hub_id": cfg.hf_hub_id or "", "hf_hub_filename": getattr(cfg, "hf_hub_filename", None) or "",
            "url": cfg.url or ""}


def _tv_weights(arch: str, weights: str) -> dict:
    try:
        from torchvision.models import get_model_weights
    except ImportError:
        raise ResolveError("torchvision is not installed where the doctor runs") from None
    try:
        enum = get_model_weights(arch)
    except (ValueError, KeyError):
        raise ResolveError(f"torchvision has no model {arch!r}") from None
    try:
        w = enum[weights]
    except KeyError:
        raise ResolveError(f"torchvision {arch} has no weights {weights!r}; it has {', '.join(enum.__members__)}") from None
    return {"url": w.url, "filename": os.path.basename(w.url)}
