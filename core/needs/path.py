"""Local paths: `{"path": "data/Market/pytorch", "kind": "dataset"}` (relative to the repo folder,
`~` the launched process's HOME)."""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence

from core.needs.base import NeedKind, Resolved, local_path


class LocalPath(NeedKind):
    """A file or folder that must exist where the launched process looks; nothing is downloaded."""

    name = "path"
    inspected = True

    def key(self, spec: Mapping[str, Any], repo_dir: str, home: str) -> str:
        return f"path:{local_path(spec, repo_dir, home)}"

    def tasks(self, spec: Mapping[str, Any], path: str, resolved: Optional[Resolved],
              stores: Mapping[str, str]) -> List[Sequence]:
        return [("path", path, spec.get("kind", "file"))]


KIND = LocalPath()
