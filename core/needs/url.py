"""A checkpoint torch.hub downloads by URL (`load_state_dict_from_url`, `model_zoo.load_url`):
`{"url": "https://host/path/resnet18-f37072fd.pth", "file": "resnet18-f37072fd.pth"}`; it lands in
`<torch hub>/checkpoints/<file>` (`file` defaults to the URL's last path part, as torch.hub names it)."""
from __future__ import annotations

import os
from typing import Any, List, Mapping, Tuple

from core.needs.base import Cached, Resolved, non_empty_string
from core.needs.torchvision import TorchvisionWeights


def file_name(spec: Mapping[str, Any]) -> str:
    return spec.get("file") or os.path.basename(str(spec.get("url", "")).split("?")[0])


class UrlCheckpoint(TorchvisionWeights):
    """Like torchvision weights (same store, same network, no fallback), named by its URL."""

    name = "url"

    def validate(self, spec: Mapping[str, Any]) -> List[Tuple[str, str]]:
        problems = non_empty_string(spec, self.name)
        if not problems and not file_name(spec):
            problems.append(("url", "expected a URL ending in a file name"))
        return problems

    def key(self, spec: Mapping[str, Any], repo_dir: str, home: str) -> str:
        return f"url:{file_name(spec)}"

    def resolve(self, spec: Mapping[str, Any], cached: Cached) -> Resolved:
        return Resolved("torchhub", filename=file_name(spec), url=spec["url"])


KIND = UrlCheckpoint()
