"""timm model names: `{"timm": "hrnet_w18", "tag": "ms_aug_in1k"?}`, resolved through timm's own
pretrained configs to a Hub repo (`timm/hrnet_w18.ms_aug_in1k`, model.safetensors then
pytorch_model.bin) or, for older models, a torch hub checkpoint URL."""
from __future__ import annotations

import os
from typing import Any, Mapping

from core.needs.base import HF_BIN, HF_SAFE, Cached, NeedKind, Resolved, ResolveError, library_version
from core.needs.hf import hf_cache_dir


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


class TimmModel(NeedKind):
    """A timm model created with pretrained=True: Hub files (cache fallback when the Hub is down)."""

    name = "timm"
    cache_vars = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "HOME")
    downloaded = inspected = True
    network = "hub"
    falls_back = True

    @staticmethod
    def full_name(spec: Mapping[str, Any]) -> str:
        tag = spec.get("tag")
        return spec["timm"] + (f".{tag}" if tag else "")

    def key(self, spec: Mapping[str, Any], repo_dir: str, home: str) -> str:
        return f"timm:{self.full_name(spec)}"

    def resolve(self, spec: Mapping[str, Any], cached: Cached) -> Resolved:
        name = self.full_name(spec)
        v = cached(f"timm/{library_version('timm')}/{name}", lambda: _timm_cfg(name))
        if v.get("hf_hub_id"):
            repo, _, rev = v["hf_hub_id"].partition("@")
            files = (v["hf_hub_filename"],) if v.get("hf_hub_filename") else (HF_SAFE, HF_BIN)
            return Resolved("hf", repo_id=repo, revision=rev or "main", files=files, any_of=len(files) > 1)
        return Resolved("torchhub", filename=os.path.basename(v["url"].split("?")[0]), url=v["url"])

    def cache_dir(self, env: Mapping[str, str], home: str) -> str:
        return hf_cache_dir(env, home)


KIND = TimmModel()
