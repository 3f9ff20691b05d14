"""What each model needs at run time, as far as explaining failures is concerned.

Read from the registry's `requires` (the shipped settings/models_config.json, or the file given
with --models-config). Only the needs that matter for "where did the weights come from" are
kept: timm / hf (the Hugging Face Hub) and torchvision (torch hub checkpoints).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Dict, Mapping, Optional, Tuple

from core.failures.patterns import invalid_patterns
from core.safefs import open_regular

SHIPPED_REGISTRY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "settings", "models_config.json")

REGISTRY_LIMIT = 16 * 1024 * 1024
# Hub ids of timm models, as timm 1.0.31's pretrained configs give them (checked in tests against
# timm.models.get_pretrained_cfg); used so explaining never imports timm.
TIMM_HUB_IDS = {"hrnet_w18": "timm/hrnet_w18.ms_aug_in1k", "resnet18": "timm/resnet18.a1_in1k"}
# torchvision checkpoint file names for `pretrained=True` (IMAGENET1K_V1).
TORCHVISION_FILES = {"densenet121": "densenet121-a639ec97.pth", "resnet50": "resnet50-0676ba61.pth",
                     "resnet18": "resnet18-f37072fd.pth"}


@dataclass(frozen=True)
class WeightsNeed:
    """Pretrained weights a model loads: `kind` is "timm", "hf" or "torchvision"."""

    kind: str
    name: str
    key: str
    hub_repo: str = ""
    file: str = ""

    @property
    def label(self) -> str:
        if self.kind == "timm":
            return f"timm model {self.name} ({self.hub_repo or 'Hub repo of ' + self.name})"
        if self.kind == "hf":
            return f"Hub repo {self.hub_repo}"
        return f"torchvision {self.name} checkpoint {self.file or ''}".strip()

    @property
    def source(self) -> str:
        if self.kind in ("timm", "hf"):
            return "Hugging Face Hub" + (" via timm" if self.kind == "timm" else "")
        return "torch hub download (download.pytorch.org)"


def _need(d: Mapping[str, Any]) -> Optional[WeightsNeed]:
    if "timm" in d:
        name = str(d["timm"])
        tag = d.get("tag")
        hub = TIMM_HUB_IDS.get(name, "") if not tag else f"timm/{name}.{tag}"
        return WeightsNeed("timm", name, f"timm:{name}" + (f".{tag}" if tag else ""), hub,
                           "model.safetensors")
    if "hf" in d:
        files = d.get("files") or []
        return WeightsNeed("hf", str(d["hf"]), f"hf:{d['hf']}", str(d["hf"]), ",".join(files))
    if "torchvision" in d:
        name = str(d["torchvision"])
        weights = d.get("weights") or ("pretrained" if d.get("pretrained") else "DEFAULT")
        f = TORCHVISION_FILES.get(name, "") if weights in ("pretrained", "IMAGENET1K_V1") else ""
        return WeightsNeed("torchvision", name, f"torchvision:{name}:{weights}", "", f)
    return None


@lru_cache(maxsize=8)
def _load(path: str) -> Tuple[Dict[Tuple[str, str], Tuple[WeightsNeed, ...]], Dict[str, Dict[str, str]]]:
    try:
        with open_regular(path) as f:
            data = json.loads(f.read(REGISTRY_LIMIT))
    except (OSError, ValueError, RecursionError):
        return {}, {}
    out: Dict[Tuple[str, str], Tuple[WeightsNeed, ...]] = {}
    patterns: Dict[str, Dict[str, str]] = {}
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        return {}, {}
    for repo, spec in models.items():
        if isinstance(spec, dict):
            pm = spec.get("performance_metrics")
            lp = pm.get("log_patterns") if isinstance(pm, dict) else None
            patterns[repo] = {str(k): v for k, v in lp.items() if isinstance(v, str)} if isinstance(lp, dict) else {}
        req = spec.get("requires") if isinstance(spec, dict) else None
        if not isinstance(req, dict):
            continue
        for model, needs in req.items():
            if not isinstance(needs, list):
                continue
            got = tuple(n for n in (_need(d) for d in needs if isinstance(d, dict)) if n)
            out[(repo, model)] = out.get((repo, model), ()) + got
    return out, patterns


class Knowledge:
    """Weights needs per (repo, model) from a registry file."""

    def __init__(self, registry: Optional[str] = None):
        self.registry = registry or SHIPPED_REGISTRY
        self._table, self._patterns = _load(self.registry)

    def weights(self, repo: str, model: str) -> Tuple[WeightsNeed, ...]:
        return self._table.get((repo, "*"), ()) + self._table.get((repo, model), ())

    def expects_metrics(self, repo: str) -> bool:
        """False only when the registry knows the repo and declares no log_patterns for it."""
        return repo not in self._patterns or bool(self._patterns[repo])

    def log_patterns(self, repo: str) -> Dict[str, str]:
        """The registry's performance_metrics.log_patterns of a repo (metric name -> regex)."""
        return dict(self._patterns.get(repo, {}))

    def invalid_patterns(self, repo: str) -> Dict[str, str]:
        """Metric name -> what is wrong with its regex, for the patterns that do not compile."""
        return invalid_patterns(self._patterns.get(repo, {}))

    def models_of(self, repo: str) -> Tuple[str, ...]:
        return tuple(sorted(m for (r, m) in self._table if r == repo and m != "*"))

    def hub_need(self, repo: str, model: str) -> Optional[WeightsNeed]:
        for n in self.weights(repo, model):
            if n.kind in ("timm", "hf"):
                return n
        return None
