"""Free GPU memory: `{"gpu_memory_gb": 4}` (the system group and the runner's GPU wait read it)."""
from __future__ import annotations

from typing import Any, List, Mapping, Tuple

from core.needs.base import NeedKind


class GpuMemory(NeedKind):
    """This many GiB of free GPU memory when the experiment starts."""

    name = "gpu_memory_gb"

    def validate(self, spec: Mapping[str, Any]) -> List[Tuple[str, str]]:
        return [] if isinstance(spec.get(self.name), (int, float)) else [(self.name, "expected a number of GiB")]


KIND = GpuMemory()
