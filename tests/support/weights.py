"""Random weights of real architectures, generated once per test session.

Generation runs in a subprocess of the project interpreter (torch, timm, torchvision
are never imported into the test process) with ``torch.manual_seed(seed)``, so the
bytes are deterministic for a given seed and library versions. Each artefact is
generated at most once per process and kept in the weights directory (set by
``tests/conftest.py`` to a session tmp dir via :func:`set_weights_dir`).

Every artefact comes with a *digest*: sha256 over the state dict (sorted keys, each
key then the tensor's raw little-endian bytes). :func:`safetensors_digest` computes the
same value from safetensors bytes without torch, and the load subprocesses in
``tests.support.caches`` print it for the model they loaded, so a test can prove that
timm/torchvision loaded exactly the served weights and not a random init.

Note: a generated torchvision checkpoint can carry the real file name
(``densenet121-a639ec97.pth``) but not a sha256 that starts with ``a639ec97``; a
hash-verifying check must report it as a mismatch.

Usage::

    data = timm_safetensors_bytes("hrnet_w18")          # ~81 MiB, ~4 s the first time
    hub.add_file("timm/hrnet_w18.ms_aug_in1k", "model.safetensors", data)
    assert safetensors_digest(data) == timm_weights_digest("hrnet_w18")
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "set_weights_dir", "weights_dir",
    "timm_safetensors_file", "timm_safetensors_bytes", "timm_weights_digest",
    "torchvision_pth_file", "torchvision_pth_bytes", "torchvision_pth", "torchvision_weights_digest",
    "torchvision_weights_urls",
    "tiny_safetensors_bytes", "safetensors_header", "safetensors_digest",
    "STATE_DICT_DIGEST_SOURCE",
]

#: Python source defining ``state_dict_digest(sd) -> str`` (torch side); used by the
#: generator and by the load subprocesses so both compute the same value.
STATE_DICT_DIGEST_SOURCE = '''
def state_dict_digest(sd):
    import hashlib, torch
    h = hashlib.sha256()
    for key in sorted(sd):
        t = sd[key].detach().cpu().reshape(-1).contiguous()
        h.update(key.encode() + b"\\0")
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
'''

_GENERATOR = STATE_DICT_DIGEST_SOURCE + '''
import json, sys, torch
kind, name, seed, fmt, out = sys.argv[1:6]
torch.manual_seed(int(seed))
if kind == "timm":
    import timm
    model = timm.create_model(name, pretrained=False)
else:
    import torchvision
    model = torchvision.models.get_model(name, weights=None)
sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
if fmt == "safetensors":
    from safetensors.torch import save_file
    save_file(sd, out)
else:
    torch.save(sd, out)
urls = {}
if kind == "torchvision":
    enum = torchvision.models.get_model_weights(name)
    urls = {key: member.url for key, member in enum.__members__.items()}
print(json.dumps({"digest": state_dict_digest(sd), "tensors": len(sd), "urls": urls}))
'''

_WEIGHTS_DIR: Path | None = None


def set_weights_dir(path: str | os.PathLike) -> Path:
    """Keep generated artefacts in ``path`` (conftest points it at a session tmp dir)."""
    global _WEIGHTS_DIR
    _WEIGHTS_DIR = Path(path)
    _WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    return _WEIGHTS_DIR


def weights_dir() -> Path:
    """The directory holding generated artefacts (a fresh temp dir if none was set)."""
    global _WEIGHTS_DIR
    if _WEIGHTS_DIR is None:
        _WEIGHTS_DIR = Path(tempfile.mkdtemp(prefix="generated-weights-"))
    return _WEIGHTS_DIR


@dataclass(frozen=True)
class _Generated:
    path: Path
    digest: str
    urls: dict  # torchvision: weights enum member name (incl. DEFAULT) -> download URL


@functools.lru_cache(maxsize=None)
def _generate(kind: str, name: str, seed: int, fmt: str) -> _Generated:
    out = weights_dir() / f"{kind}-{name}-seed{seed}.{fmt}"
    tmp = out.with_suffix(out.suffix + ".tmp")
    proc = subprocess.run(
        [sys.executable, "-c", _GENERATOR, kind, name, str(seed), fmt, str(tmp)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"generating {kind} {name} weights failed:\n{proc.stderr[-4000:]}")
    tmp.replace(out)
    out.chmod(0o444)  # shared by the whole session: copy it, never modify it
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return _Generated(out, result["digest"], result["urls"])


# -- timm ---------------------------------------------------------------------------------
def timm_safetensors_file(model_name: str = "hrnet_w18", seed: int = 0) -> Path:
    """Path of the session's generated safetensors for ``model_name`` (read-only, shared)."""
    return _generate("timm", model_name, seed, "safetensors").path


@functools.lru_cache(maxsize=None)
def timm_safetensors_bytes(model_name: str = "hrnet_w18", seed: int = 0) -> bytes:
    """``timm.create_model(model_name, pretrained=False).state_dict()`` saved with safetensors.

    The key layout is exactly what timm's pretrained loader expects (strict load).
    """
    return timm_safetensors_file(model_name, seed).read_bytes()


def timm_weights_digest(model_name: str = "hrnet_w18", seed: int = 0) -> str:
    """State-dict digest of :func:`timm_safetensors_bytes` (same as :func:`safetensors_digest` of it)."""
    return _generate("timm", model_name, seed, "safetensors").digest


# -- torchvision --------------------------------------------------------------------------
def torchvision_pth_file(arch: str = "densenet121", seed: int = 0) -> Path:
    """Path of the session's generated ``torch.save`` state dict for ``arch`` (read-only, shared)."""
    return _generate("torchvision", arch, seed, "pth").path


@functools.lru_cache(maxsize=None)
def torchvision_pth_bytes(arch: str = "densenet121", seed: int = 0) -> bytes:
    """``torchvision.models.get_model(arch, weights=None).state_dict()`` saved with ``torch.save``."""
    return torchvision_pth_file(arch, seed).read_bytes()


def torchvision_pth(path: str | os.PathLike, arch: str = "densenet121", seed: int = 0) -> Path:
    """Write the generated ``arch`` state dict to ``path`` (parents created); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(torchvision_pth_file(arch, seed), path)
    path.chmod(0o644)
    return path


def torchvision_weights_digest(arch: str = "densenet121", seed: int = 0) -> str:
    """State-dict digest of :func:`torchvision_pth_bytes`."""
    return _generate("torchvision", arch, seed, "pth").digest


def torchvision_weights_urls(arch: str = "densenet121") -> dict[str, str]:
    """``{enum member name: url}`` of torchvision's weights enum for ``arch`` (``DEFAULT`` included),
    read by the generator subprocess (so asking for names costs no extra torch import)."""
    return dict(_generate("torchvision", arch, 0, "pth").urls)


# -- tiny, torch-free ---------------------------------------------------------------------
def tiny_safetensors_bytes(seed: int = 0, shapes: dict[str, tuple[int, ...]] | None = None) -> bytes:
    """A small valid safetensors file of float32 tensors, built without torch (microseconds).

    For tests where the architecture does not matter (cache presence, hashing, LFS).
    Default: ``{"layer.weight": (4, 4), "layer.bias": (4,)}``; values from ``random.Random(seed)``.
    """
    shapes = shapes or {"layer.weight": (4, 4), "layer.bias": (4,)}
    rng = random.Random(seed)
    header, chunks, offset = {}, [], 0
    for name in sorted(shapes):
        shape = tuple(int(n) for n in shapes[name])
        count = 1
        for n in shape:
            count *= n
        raw = struct.pack(f"<{count}f", *(rng.uniform(-1, 1) for _ in range(count)))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


def safetensors_header(data: bytes) -> dict:
    """The JSON header of safetensors ``data`` (raises ``ValueError`` if it is not safetensors)."""
    if len(data) < 8:
        raise ValueError("not a safetensors file: shorter than 8 bytes")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise ValueError("not a safetensors file: header length beyond end of data")
    try:
        return json.loads(data[8:8 + size])
    except ValueError as exc:
        raise ValueError(f"not a safetensors file: {exc}") from None


def safetensors_digest(data: bytes) -> str:
    """State-dict digest of safetensors ``data`` (same definition as ``state_dict_digest``)."""
    header = safetensors_header(data)
    (size,) = struct.unpack("<Q", data[:8])
    base = 8 + size
    h = hashlib.sha256()
    view = memoryview(data)
    for key in sorted(k for k in header if k != "__metadata__"):
        start, end = header[key]["data_offsets"]
        h.update(key.encode() + b"\0")
        h.update(view[base + start:base + end])
    return h.hexdigest()
