"""torchvision weights / torch hub checkpoints: `{"torchvision": "resnet50", "weights": "IMAGENET1K_V1"}`
or `{"torchvision": "densenet121", "pretrained": true}` (the legacy flag means IMAGENET1K_V1)."""
from __future__ import annotations

import os
from typing import Any, Mapping

from core.envpath import expanduser
from core.needs.base import Cached, NeedKind, Resolved, ResolveError, library_version

DEFAULT_HOST = "https://download.pytorch.org"


def torch_hub_dir(env: Mapping[str, str], home: str) -> str:
    """torch.hub's directory: $TORCH_HOME/hub > $XDG_CACHE_HOME/torch/hub > ~/.cache/torch/hub.

    As torch.hub computes it: `~` is expanded, `$VAR` is not (torch does not call expandvars).
    """
    torch_home = expanduser(env.get("TORCH_HOME", os.path.join(env.get("XDG_CACHE_HOME", "~/.cache"), "torch")), home)
    return os.path.abspath(os.path.join(torch_home, "hub"))


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


class TorchvisionWeights(NeedKind):
    """Weights torch.hub downloads into `<torch hub>/checkpoints`: a present file means no network;
    an absent one with the host unreachable fails (or hangs), never falls back."""

    name = "torchvision"
    store = "torchhub"
    cache_vars = ("TORCH_HOME", "XDG_CACHE_HOME", "HOME")
    downloaded = inspected = True
    network = "torchhub"
    falls_back = False

    def key(self, spec: Mapping[str, Any], repo_dir: str, home: str) -> str:
        w = spec.get("weights") or ("pretrained" if spec.get("pretrained") else "DEFAULT")
        return f"torchvision:{spec['torchvision']}:{w}"

    def resolve(self, spec: Mapping[str, Any], cached: Cached) -> Resolved:
        arch = spec["torchvision"]
        weights = spec.get("weights") or ("IMAGENET1K_V1" if spec.get("pretrained") else "DEFAULT")
        v = cached(f"torchvision/{library_version('torchvision')}/{arch}/{weights}", lambda: _tv_weights(arch, weights))
        return Resolved("torchhub", filename=v["filename"], url=v["url"])

    def cache_dir(self, env: Mapping[str, str], home: str) -> str:
        return torch_hub_dir(env, home)


KIND = TorchvisionWeights()
