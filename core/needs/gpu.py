"""A GPU: `{"gpu": true}` (checked by the system group, not looked for in a cache)."""
from __future__ import annotations

from typing import Any, List, Mapping, Tuple

from core.needs.base import NeedKind


class Gpu(NeedKind):
    """Any usable GPU."""

    name = "gpu"

    def validate(self, spec: Mapping[str, Any]) -> List[Tuple[str, str]]:
        return []


KIND = Gpu()
