"""Small on-disk memos (resolved model names, file hashes, interpreter probes) and atomic writes."""
from __future__ import annotations

import json
import os
import threading
from typing import Any, Optional


def write_atomic(path: str, data: bytes, durable: bool = True) -> None:
    """Readers see the old content or the new, never a part. `durable`: fsync before the rename."""
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with open(tmp, "xb") as f:  # O_EXCL: never through a link planted at the temporary name
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except FileExistsError:
        raise  # the temporary name was taken (planted?): it is not ours to remove
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def memo_dir(options=None) -> str:
    """Where the doctor keeps its memos: Options.memo_dir, else $XDG_CACHE_HOME or ~/.cache, /mutation-preflight."""
    explicit = getattr(options, "memo_dir", None)
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mutation-preflight")


class JsonMemo:
    """A dict kept in a JSON file: loaded once, thread-safe, saved atomically when changed.

    A memo that cannot be read starts empty; one that cannot be written is skipped silently
    (a memo only saves time, it never decides anything)."""

    def __init__(self, path: Optional[str], limit: Optional[int] = None):
        self.path = path
        self.limit = limit  # keep at most this many entries (the most recently put)
        self._lock = threading.Lock()
        self._dirty = False
        self._data: dict = {}
        if path:
            try:
                with open(path, encoding="utf-8") as f:
                    loaded = json.load(f)
                self._data = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                self._data = {}

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return self._data.get(key, default)

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._data.pop(key, None)
            self._data[key] = value
            if self.limit is not None:
                while len(self._data) > self.limit:
                    self._data.pop(next(iter(self._data)))
            self._dirty = True

    def save(self) -> None:
        if not (self.path and self._dirty):
            return
        with self._lock:
            text = json.dumps(self._data, indent=None, sort_keys=False).encode()
            self._dirty = False
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            write_atomic(self.path, text, durable=False)
        except OSError:
            pass
