"""A FIFO where a file is expected hangs no reader, and cache states are named truthfully: an
unreadable snapshot is not "missing", an unreadable blobs/ not "dangling", a snapshot link
pointing outside the cache is broken, not present."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from core import hubcache
from core.hubcache import BROKEN, PRESENT, UNREADABLE
from tests.support import TINY_REPO, caches
from tests.test_cache import open_tmp  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]


def bounded(fn, seconds: float = 30):
    """fn() in a daemon thread; its result, or an AssertionError when it hangs."""
    out = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(seconds)
    assert out, f"{fn} is still blocked after {seconds} s"
    return out[0]


def _fifo_instead(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


@pytest.mark.parametrize("which", ["ref", "blob", "trees"])
def test_fifos_in_the_hf_cache_hang_nothing(tiny_cache, which):
    repo = caches.hf_repo_dir(tiny_cache, TINY_REPO)
    if which == "ref":
        _fifo_instead(repo / "refs" / "main")
    elif which == "blob":
        _fifo_instead(caches.hf_blob_path(tiny_cache, TINY_REPO, "model.safetensors"))
    else:
        commit = caches.hf_commit(tiny_cache, TINY_REPO)
        (repo / "trees").mkdir(exist_ok=True)
        os.mkfifo(repo / "trees" / f"{commit}.json")
    memo = hubcache.HashMemo(None)
    state = bounded(lambda: hubcache.inspect_hf_file(str(tiny_cache), TINY_REPO, "model.safetensors",
                                                     verify=True, memo=memo))
    if which == "trees":
        assert state.status == PRESENT
    else:
        assert state.status == BROKEN and state.problem == "not-a-file" and "FIFO" in state.detail


def test_a_fifo_checkpoint_or_data_path_hangs_nothing(tmp_path):
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    os.mkfifo(tmp_path / "hub" / "checkpoints" / "densenet121-a639ec97.pth")
    state = bounded(lambda: hubcache.inspect_torch_checkpoint(str(tmp_path / "hub"), "densenet121-a639ec97.pth",
                                                              verify=True, memo=hubcache.HashMemo(None)))
    assert state.status == BROKEN and state.problem == "not-a-file"
    os.mkfifo(tmp_path / "train.csv")
    assert bounded(lambda: hubcache.inspect_path(str(tmp_path / "train.csv"))).problem == "not-a-file"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.csv").write_text("a,b\n")
    os.mkfifo(tmp_path / "data" / "y.csv")
    assert bounded(lambda: hubcache.inspect_path(str(tmp_path / "data"), kind="folder")).status == PRESENT


def test_a_snapshot_link_out_of_the_cache_is_broken(tiny_cache, tmp_path):
    secret = tmp_path / "shadow"  # stands for /etc/shadow
    secret.write_text("root:$6$...\n")
    snap = caches.hf_snapshot_path(tiny_cache, TINY_REPO, "model.safetensors")
    snap.unlink()
    snap.symlink_to(secret)
    state = hubcache.inspect_hf_file(str(tiny_cache), TINY_REPO, "model.safetensors")
    assert state.status == BROKEN and state.problem == "outside-cache" and str(secret) in state.detail


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to drop to another user")
def test_an_unreadable_snapshot_or_blobs_folder_is_unreadable_not_missing(tiny_cache, open_tmp):  # noqa: F811
    cache = open_tmp / "hub"
    shutil.copytree(tiny_cache, cache, symlinks=True)
    repo = caches.hf_repo_dir(cache, TINY_REPO)
    commit = caches.hf_commit(cache, TINY_REPO)
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from core import hubcache; "
            "s = hubcache.inspect_hf_file(sys.argv[2], sys.argv[3], 'model.safetensors'); "
            "print(json.dumps([s.status, s.problem, s.detail]))")

    def as_nobody():
        p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code,
                            str(ROOT), str(cache), TINY_REPO], capture_output=True, text=True, timeout=60, cwd="/")
        assert p.returncode == 0, p.stderr[-2000:]
        return json.loads(p.stdout)

    for d, _dirs, _files in os.walk(open_tmp):
        os.chmod(d, 0o755)
    os.chmod(repo / "snapshots" / commit, 0o700)
    status, _problem, detail = as_nobody()
    assert status == UNREADABLE and str(repo / "snapshots" / commit) in detail
    os.chmod(repo / "snapshots" / commit, 0o755)
    os.chmod(repo / "blobs", 0o700)
    status, _problem, detail = as_nobody()
    assert status == UNREADABLE and str(repo / "blobs") in detail


def test_settings_and_registry_fifos_are_one_line_errors(tmp_path):
    os.mkfifo(tmp_path / "s.json")
    os.mkfifo(tmp_path / "models.json")
    (tmp_path / "ok.json").write_text(json.dumps({"experiments": []}))
    for args in (["-ec", str(tmp_path / "s.json")],
                 ["-ec", str(tmp_path / "ok.json"), "--models-config", str(tmp_path / "models.json")]):
        for prog in (["-m", "doctor.cli"], ["-m", "runner.cli", "--dry-run"]):
            p = subprocess.run([sys.executable, *prog[:2], *args, *prog[2:], "--only", "settings"], cwd=str(ROOT),
                               capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
            assert p.returncode == 2, (prog, args, p.stdout[-500:], p.stderr[-1500:])
            assert "Traceback" not in p.stderr and "FIFO" in p.stderr.strip().splitlines()[-1], p.stderr[-1500:]
