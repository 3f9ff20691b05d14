"""Populate and break Hugging Face / torch hub caches for real.

Everything that needs huggingface_hub, timm or torchvision runs in a subprocess of the
project interpreter (``sys.executable``) with an explicit environment: those libraries
read ``HF_ENDPOINT``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` ... once at import, and the
test process must stay free of torch and of frozen library constants.

Populate (the real client against a :class:`~tests.support.hubserver.HubServer`)::

    snap = populate_hf_cache(hub.url, cache, "org/tiny", "model.safetensors")
    proc = timm_load_subprocess("hrnet_w18", hub_env(hub.url, cache, base=clean_env, offline=True))
    assert proc.returncode == 0, proc.stderr
    ckpt = place_torchvision_checkpoint(torch_home, "densenet121")

Break (each function produces one broken state and returns the path it touched)::

    delete_blob(cache, "org/tiny", "model.safetensors")      # snapshot link now dangles
    truncate_blob(cache, "org/tiny", "model.safetensors")    # blob shorter than its name says
    leave_incomplete(cache, "org/tiny", "model.safetensors") # interrupted download leftovers
    interrupt_hf_download(hub, cache, "org/tiny", "model.safetensors")  # same, by killing the client
    remove_ref(cache, "org/tiny")                             # refs/main gone
    write_lfs_pointer(path)                                   # file replaced by a Git LFS pointer
    write_no_exist_marker(cache, "org/tiny", "pytorch_model.bin")
    move_blob_to_shared_store(cache, "org/tiny", "model.safetensors")  # 2.x shared-store hop
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence
from urllib.parse import urlparse

from .weights import STATE_DICT_DIGEST_SOURCE, torchvision_pth, torchvision_weights_urls

__all__ = [
    "clean_environ", "hub_env", "run_python", "last_json",
    "hf_download_subprocess", "populate_hf_cache", "populate_hf_snapshot", "try_to_load_from_cache_subprocess",
    "timm_load_subprocess", "torchvision_load_subprocess",
    "torchvision_checkpoint_name", "place_torchvision_checkpoint",
    "hf_repo_dir", "hf_commit", "hf_snapshot_path", "hf_blob_path",
    "delete_blob", "truncate_blob", "leave_incomplete", "interrupt_hf_download", "remove_ref",
    "lfs_pointer_text", "write_lfs_pointer", "write_no_exist_marker", "move_blob_to_shared_store",
]

_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy"}
_DROP_EXACT = {"TORCH_HOME", "XDG_CACHE_HOME"}
_DROP_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_")
_REPO_TYPES = {"model": "models", "dataset": "datasets", "space": "spaces"}


# -- environments and subprocesses --------------------------------------------------------
def clean_environ(home: str | os.PathLike, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default ``os.environ``) with every ``HF_*``, ``HUGGINGFACE_*``,
    ``TRANSFORMERS_*``, ``TORCH_HOME``, ``XDG_CACHE_HOME`` and proxy variable removed and
    ``HOME`` set to ``home``: no cache or hub setting of the machine leaks into a test."""
    env = dict(os.environ if base is None else base)
    for key in list(env):
        if key.startswith(_DROP_PREFIXES) or key in _DROP_EXACT or key.lower() in _PROXY_VARS:
            del env[key]
    env["HOME"] = str(home)
    return env


def hub_env(hub_url: str | None, cache_dir: str | os.PathLike | None, *, base: Mapping[str, str] | None = None,
            offline: bool = False, **extra: str) -> dict[str, str]:
    """``base`` (default: ``os.environ`` cleaned, HOME kept) plus ``HF_ENDPOINT=hub_url``,
    ``HF_HUB_CACHE=cache_dir``, quiet progress bars, no telemetry, and ``HF_HUB_OFFLINE=1``
    if ``offline``. ``None`` leaves a variable unset; ``extra`` adds/overrides variables."""
    env = dict(base) if base is not None else clean_environ(os.environ.get("HOME", "/root"))
    env.update(HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1", PYTHONDONTWRITEBYTECODE="1")
    if hub_url is not None:
        env["HF_ENDPOINT"] = hub_url
    if cache_dir is not None:
        env["HF_HUB_CACHE"] = str(cache_dir)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_python(code: str, args: Sequence[str] = (), *, env: Mapping[str, str] | None = None,
               timeout: float = 120, cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` with the project interpreter (argv list, no shell), capturing text output."""
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], env=None if env is None else dict(env),
        capture_output=True, text=True, timeout=timeout, cwd=cwd,
    )


def last_json(proc: subprocess.CompletedProcess):
    """The JSON value printed on the last non-empty stdout line of ``proc``."""
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if not lines:
        raise AssertionError(f"no output (exit {proc.returncode}); stderr:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


_DOWNLOAD = '''
import json, sys
import huggingface_hub
repo_id, filename, revision, repo_type = sys.argv[1:5]
try:
    path = huggingface_hub.hf_hub_download(repo_id=repo_id, filename=filename, revision=revision,
                                           repo_type=repo_type)
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
    sys.exit(1)
print(json.dumps({"path": path}))
'''


def hf_download_subprocess(hub_url: str | None, cache_dir: str | os.PathLike | None, repo_id: str, filename: str,
                           revision: str = "main", *, repo_type: str = "model", env: Mapping[str, str] | None = None,
                           offline: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the real ``hf_hub_download`` in a subprocess; never raises on a failed download.

    Last stdout line: ``{"path": ...}`` (exit 0) or ``{"error": <exception class>, "message": ...}``
    (exit 1). A missing file gives ``RemoteEntryNotFoundError`` and writes the real
    ``.no_exist/<commit>/<file>`` marker. ``env`` is the base environment (see :func:`hub_env`).
    """
    return run_python(_DOWNLOAD, [repo_id, filename, revision, repo_type],
                      env=hub_env(hub_url, cache_dir, base=env, offline=offline), timeout=timeout)


def populate_hf_cache(hub_url: str, cache_dir: str | os.PathLike, repo_id: str, filename: str,
                      revision: str = "main", *, repo_type: str = "model", env: Mapping[str, str] | None = None,
                      timeout: float = 120) -> Path:
    """Download ``filename`` into ``cache_dir`` with the real client; returns the snapshot path."""
    proc = hf_download_subprocess(hub_url, cache_dir, repo_id, filename, revision,
                                  repo_type=repo_type, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"hf_hub_download({repo_id!r}, {filename!r}) failed: {proc.stdout.strip()}\n"
                           f"{proc.stderr[-3000:]}")
    return Path(last_json(proc)["path"])


_SNAPSHOT = '''
import json, sys
import huggingface_hub
repo_id, revision, repo_type = sys.argv[1:4]
print(json.dumps(huggingface_hub.snapshot_download(repo_id=repo_id, revision=revision, repo_type=repo_type)))
'''


def populate_hf_snapshot(hub_url: str, cache_dir: str | os.PathLike, repo_id: str, revision: str = "main", *,
                         repo_type: str = "model", env: Mapping[str, str] | None = None,
                         timeout: float = 120) -> Path:
    """``snapshot_download`` every file of the repo with the real client; returns the snapshot
    folder. Unlike ``hf_hub_download`` this also writes ``trees/<commit>.json`` (file sizes)."""
    proc = run_python(_SNAPSHOT, [repo_id, revision, repo_type],
                      env=hub_env(hub_url, cache_dir, base=env), timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"snapshot_download({repo_id!r}) failed:\n{proc.stderr[-3000:]}")
    return Path(last_json(proc))


_TRY_CACHE = '''
import json, sys
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.file_download import _CACHED_NO_EXIST
cache_dir, repo_id, filename, revision, repo_type = sys.argv[1:6]
found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision, repo_type=repo_type)
print(json.dumps("no_exist" if found is _CACHED_NO_EXIST else found))
'''


def try_to_load_from_cache_subprocess(cache_dir: str | os.PathLike, repo_id: str, filename: str,
                                      revision: str = "main", repo_type: str = "model") -> str | None:
    """``huggingface_hub.try_to_load_from_cache`` run in a subprocess: the path, ``None``,
    or the string ``"no_exist"`` for the library's ``_CACHED_NO_EXIST``."""
    proc = run_python(_TRY_CACHE, [cache_dir, repo_id, filename, revision, repo_type],
                      env=hub_env(None, None), timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"try_to_load_from_cache failed:\n{proc.stderr[-3000:]}")
    return last_json(proc)


_TIMM_LOAD = STATE_DICT_DIGEST_SOURCE + '''
import json, sys, time
t0 = time.monotonic()
import timm
model = timm.create_model(sys.argv[1], pretrained=True)
print(json.dumps({"model": sys.argv[1], "digest": state_dict_digest(model.state_dict()),
                  "params": sum(p.numel() for p in model.parameters()),
                  "seconds": round(time.monotonic() - t0, 3)}))
'''


def timm_load_subprocess(model_name: str, env: Mapping[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """``timm.create_model(model_name, pretrained=True)`` in a subprocess with exactly ``env``.

    Success: exit 0, last stdout line ``{"model", "digest", "params", "seconds"}`` (compare
    ``digest`` with ``weights.timm_weights_digest``). Failure: non-zero exit, traceback in
    stderr (e.g. ``LocalEntryNotFoundError`` with ``HF_HUB_OFFLINE=1`` and an empty cache).
    Raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds.
    """
    return run_python(_TIMM_LOAD, [model_name], env=env, timeout=timeout)


_TV_LOAD = STATE_DICT_DIGEST_SOURCE + '''
import json, sys, time
t0 = time.monotonic()
import torchvision
arch, weights = sys.argv[1:3]
enum = torchvision.models.get_model_weights(arch)
model = getattr(torchvision.models, arch)(weights=enum[weights])
print(json.dumps({"model": arch, "weights": weights, "digest": state_dict_digest(model.state_dict()),
                  "seconds": round(time.monotonic() - t0, 3)}))
'''


def torchvision_load_subprocess(arch: str, env: Mapping[str, str], timeout: float = 120,
                                weights: str = "IMAGENET1K_V1") -> subprocess.CompletedProcess:
    """``torchvision.models.<arch>(weights=<Enum>[weights])`` in a subprocess with exactly ``env``.

    Success: exit 0 and ``{"model", "weights", "digest", "seconds"}`` on the last stdout line.
    With the checkpoint absent torchvision tries to download it: give ``env`` no network
    (or a refused proxy) and a short ``timeout``.
    """
    return run_python(_TV_LOAD, [arch, weights], env=env, timeout=timeout)


def torchvision_checkpoint_name(arch: str, weights: str = "IMAGENET1K_V1") -> str:
    """The checkpoint file name torchvision uses for ``arch``/``weights``, read from its
    weights enum (e.g. ``densenet121-a639ec97.pth``; ``"DEFAULT"`` works too).

    Answered by the weights generator subprocess, so the arch's weights get generated too.
    """
    urls = torchvision_weights_urls(arch)
    if weights not in urls:
        raise KeyError(f"torchvision has no {weights!r} weights for {arch} (has: {sorted(urls)})")
    return os.path.basename(urlparse(urls[weights]).path)


def place_torchvision_checkpoint(torch_home: str | os.PathLike, arch: str = "densenet121",
                                 weights: str = "IMAGENET1K_V1", *, content: bytes | None = None,
                                 seed: int = 0) -> Path:
    """Write ``$TORCH_HOME/hub/checkpoints/<real name>`` for ``arch``/``weights``.

    Default content: generated random weights of ``arch`` (loadable by torchvision; the
    sha256 does not match the name's hash prefix). ``content`` writes those bytes instead
    (fast, for presence-only tests; not loadable).
    """
    path = Path(torch_home) / "hub" / "checkpoints" / torchvision_checkpoint_name(arch, weights)
    if content is None:
        return torchvision_pth(path, arch, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# -- cache layout ---------------------------------------------------------------------------
def hf_repo_dir(cache_dir: str | os.PathLike, repo_id: str, repo_type: str = "model") -> Path:
    """``<cache>/models--org--name`` (``datasets--``/``spaces--`` for other repo types)."""
    return Path(cache_dir) / f"{_REPO_TYPES[repo_type]}--{repo_id.replace('/', '--')}"


def hf_commit(cache_dir: str | os.PathLike, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
    """The commit ``refs/<revision>`` points to (``revision`` itself if it is a 40-hex id)."""
    if len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
        return revision
    return (hf_repo_dir(cache_dir, repo_id, repo_type) / "refs" / revision).read_text().strip()


def hf_snapshot_path(cache_dir: str | os.PathLike, repo_id: str, filename: str, revision: str = "main",
                     repo_type: str = "model") -> Path:
    """``snapshots/<commit>/<filename>`` (the symlink, not followed)."""
    commit = hf_commit(cache_dir, repo_id, revision, repo_type)
    return hf_repo_dir(cache_dir, repo_id, repo_type) / "snapshots" / commit / filename


def hf_blob_path(cache_dir: str | os.PathLike, repo_id: str, filename: str, revision: str = "main",
                 repo_type: str = "model") -> Path:
    """The repo's ``blobs/<etag>`` the snapshot link points to (one hop only, not resolved further)."""
    link = hf_snapshot_path(cache_dir, repo_id, filename, revision, repo_type)
    return Path(os.path.normpath(link.parent / os.readlink(link)))


# -- corruptions ----------------------------------------------------------------------------
def delete_blob(cache_dir, repo_id: str, filename: str, revision: str = "main", repo_type: str = "model") -> Path:
    """Remove the blob: the snapshot symlink is left dangling. Returns the removed blob path."""
    blob = hf_blob_path(cache_dir, repo_id, filename, revision, repo_type)
    blob.unlink()
    return blob


def truncate_blob(cache_dir, repo_id: str, filename: str, revision: str = "main", size: int | None = None,
                  repo_type: str = "model") -> Path:
    """Cut the blob to ``size`` bytes (default: half). Returns the blob path."""
    blob = hf_blob_path(cache_dir, repo_id, filename, revision, repo_type)
    target = blob.resolve()  # through a shared-store hop, if any
    current = target.stat().st_size
    target.chmod(0o644)
    os.truncate(target, current // 2 if size is None else size)
    return blob


def leave_incomplete(cache_dir, repo_id: str, filename: str, revision: str = "main", *, interrupted: bool = True,
                     nbytes: int | None = None, legacy_name: bool = False, repo_type: str = "model") -> Path:
    """Leave a partial download in ``blobs/``, as huggingface_hub does when killed mid-download.

    The file is named ``<etag>.<8 hex>.incomplete`` (2.x; ``legacy_name=True``: 1.x's
    ``<etag>.incomplete``) and holds the first ``nbytes`` (default: half) of the blob.
    ``interrupted=True`` also removes the blob and the snapshot link (refs and the empty
    snapshot folder stay): the state a killed first download leaves. ``interrupted=False``
    keeps the complete file next to the leftover. Returns the ``.incomplete`` path.
    """
    link = hf_snapshot_path(cache_dir, repo_id, filename, revision, repo_type)
    blob = hf_blob_path(cache_dir, repo_id, filename, revision, repo_type)
    data = blob.read_bytes()
    etag = blob.name
    suffix = ".incomplete" if legacy_name else f".{hashlib.sha1(etag.encode()).hexdigest()[:8]}.incomplete"
    partial = blob.with_name(etag + suffix)
    partial.write_bytes(data[: len(data) // 2 if nbytes is None else nbytes])
    if interrupted:
        link.unlink()
        blob.unlink()
    return partial


def interrupt_hf_download(hub, cache_dir, repo_id: str, filename: str, revision: str = "main", *,
                          timeout: float = 20) -> Path:
    """Start the real ``hf_hub_download`` against ``hub`` (a HubServer), stall the transfer
    halfway, and SIGKILL the client: the genuine leftover of an interrupted download.

    Bodies are held back with ``hub.stall_after`` for the duration, so use a server no
    other test downloads from at the same time. Returns the ``.incomplete`` file (empty
    when less than huggingface_hub's 10 MiB write chunk arrived, as in reality).
    """
    served = hub.file(repo_id, filename, revision)
    blobs = hf_repo_dir(cache_dir, repo_id) / "blobs"
    half = served.size // 2
    flushed = (half // (10 * 1024 * 1024)) * 10 * 1024 * 1024
    hub.stall_after = half
    proc = subprocess.Popen(
        [sys.executable, "-c", _DOWNLOAD, repo_id, filename, revision, "model"],
        env=hub_env(hub.url, cache_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            found = sorted(blobs.glob(f"{served.etag}*.incomplete")) if blobs.is_dir() else []
            if found and found[0].stat().st_size >= flushed:
                time.sleep(0.1)
                break
            if proc.poll() is not None:
                raise RuntimeError(f"download ended (exit {proc.returncode}) before it could be interrupted")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no partial download of {filename} appeared within {timeout} s")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        hub.stall_after = None
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    return found[0]


def remove_ref(cache_dir, repo_id: str, revision: str = "main", repo_type: str = "model") -> Path:
    """Delete ``refs/<revision>`` (snapshots and blobs stay). Returns the removed path."""
    ref = hf_repo_dir(cache_dir, repo_id, repo_type) / "refs" / revision
    ref.unlink()
    return ref


def lfs_pointer_text(data: bytes) -> bytes:
    """The Git LFS pointer file a ``git clone`` without LFS leaves in place of ``data``."""
    oid = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n".encode()


def write_lfs_pointer(path: str | os.PathLike, data: bytes | None = None) -> Path:
    """Replace the file at ``path`` by the Git LFS pointer of ``data`` (default: its own content).

    A symlink (an HF snapshot entry) is followed: the blob it points to receives the
    pointer text, so the snapshot name stays but its content is a pointer. Returns the
    path written (the resolved one).
    """
    target = Path(path).resolve()
    original = target.read_bytes() if data is None else data
    if target.exists():
        target.chmod(0o644)  # blobs may be read-only
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(lfs_pointer_text(original))
    return target


def write_no_exist_marker(cache_dir, repo_id: str, filename: str, revision: str = "main",
                          commit: str | None = None, repo_type: str = "model") -> Path:
    """Create ``.no_exist/<commit>/<filename>`` (the client's "this file does not exist at this
    commit" record; :func:`hf_download_subprocess` of a missing file writes the same for real).
    ``commit`` defaults to what ``refs/<revision>`` holds."""
    commit = commit or hf_commit(cache_dir, repo_id, revision, repo_type)
    marker = hf_repo_dir(cache_dir, repo_id, repo_type) / ".no_exist" / commit / filename
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return marker


_PUBLISH = '''
import json, os, sys
from huggingface_hub.utils._shared_blobs import publish_blob_to_shared_store
blob, xet_hash, cache_dir = sys.argv[1:4]
ok = publish_blob_to_shared_store(blob_path=blob, xet_hash=xet_hash, cache_dir=cache_dir,
                                  expected_size=os.path.getsize(blob))
print(json.dumps(ok))
'''


def move_blob_to_shared_store(cache_dir, repo_id: str, filename: str, revision: str = "main",
                              xet_hash: str | None = None, repo_type: str = "model") -> Path:
    """Move the repo blob into huggingface_hub 2.x's cache-wide store with the library's own
    ``publish_blob_to_shared_store``: ``blobs/<etag>`` becomes a relative symlink to
    ``<cache>/blobs/<xx>/<xet_hash>`` (two hops from the snapshot). ``xet_hash`` defaults to
    a 64-hex id derived from the content. Returns the store file path."""
    blob = hf_blob_path(cache_dir, repo_id, filename, revision, repo_type)
    if xet_hash is None:
        xet_hash = hashlib.sha256(b"xet:" + blob.read_bytes()).hexdigest()
    args = [os.path.abspath(blob), xet_hash, os.path.abspath(cache_dir)]
    proc = run_python(_PUBLISH, args, env=hub_env(None, None), timeout=60)
    if proc.returncode != 0 or last_json(proc) is not True:
        raise RuntimeError(f"publish_blob_to_shared_store failed: {proc.stdout}\n{proc.stderr[-3000:]}")
    return Path(cache_dir) / "blobs" / xet_hash[:2] / xet_hash
