"""Model names to the files the libraries will open, through each need kind's adapter (core.needs).

Resolution imports timm or torchvision (seconds), so results are memoised per library version in
`~/.cache/mutation-preflight/resolve.json`: a warm doctor run imports neither.
"""
from __future__ import annotations

from core.memo import JsonMemo
from core.model import Need
from core.needs import HF_BIN, HF_SAFE, Resolved, ResolveError, adapter  # noqa: F401 - re-exported


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
        """The files `need` makes its library open; ResolveError for unknown names or kinds without files."""
        return adapter(need.kind).resolve(need.spec, self._cached)
