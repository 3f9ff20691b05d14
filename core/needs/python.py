"""Interpreters: `{"python": "/home/alice/miniconda3/envs/reid/bin/python"}` (absolute)."""
from __future__ import annotations

import os
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from core.needs.base import NeedKind, Resolved, non_empty_string


class Interpreter(NeedKind):
    """An interpreter a train.sh runs; it must exist and be executable for the launched process."""

    name = "python"
    inspected = True

    def validate(self, spec: Mapping[str, Any]) -> List[Tuple[str, str]]:
        problems = non_empty_string(spec, self.name)
        if not problems and not os.path.isabs(os.path.expanduser(spec["python"])):
            problems.append(("python", "expected an absolute interpreter path"))
        return problems

    def tasks(self, spec: Mapping[str, Any], path: str, resolved: Optional[Resolved],
              stores: Mapping[str, str]) -> List[Sequence]:
        return [("python", path)]


KIND = Interpreter()
