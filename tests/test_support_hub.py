"""The loopback Hub and the cache helpers against the real huggingface_hub client and timm."""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request

import pytest

from tests.support import HRNET_REPO, TINY_CONFIG, TINY_REPO, caches, weights
from tests.support.hubserver import HubServer, commit_sha, git_blob_id


def _resolve(hub, repo_id, filename, method="GET", headers=None):
    req = urllib.request.Request(hub.resolve_url(repo_id, filename), method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


# -- the protocol, seen from a plain HTTP client ---------------------------------------------
def test_head_carries_hub_metadata(fresh_hub, tiny_weights):
    status, headers, body = _resolve(fresh_hub, TINY_REPO, "model.safetensors", method="HEAD")
    assert status == 200 and body == b""
    assert headers["X-Repo-Commit"] == commit_sha(TINY_REPO)
    assert headers["X-Linked-Etag"] == f'"{hashlib.sha256(tiny_weights).hexdigest()}"'
    assert headers["X-Linked-Size"] == headers["Content-Length"] == str(len(tiny_weights))

    status, headers, _ = _resolve(fresh_hub, TINY_REPO, "config.json", method="HEAD")
    assert headers["ETag"] == f'"{git_blob_id(TINY_CONFIG)}"' and "X-Linked-Etag" not in headers


def test_get_honours_range(fresh_hub, tiny_weights):
    status, headers, body = _resolve(fresh_hub, TINY_REPO, "model.safetensors", headers={"Range": "bytes=100-"})
    assert status == 206 and body == tiny_weights[100:]
    assert headers["Content-Range"] == f"bytes 100-{len(tiny_weights) - 1}/{len(tiny_weights)}"
    status, headers, _ = _resolve(fresh_hub, TINY_REPO, "model.safetensors", headers={"Range": "bytes=99999-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(tiny_weights)}"


def test_unknown_paths_are_clean_404s(fresh_hub):
    status, headers, body = _resolve(fresh_hub, TINY_REPO, "missing.bin")
    assert (status, headers["X-Error-Code"]) == (404, "EntryNotFound")
    assert headers["X-Repo-Commit"] == commit_sha(TINY_REPO)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(fresh_hub.url + "/api/whatever", timeout=10)
    assert err.value.code == 404 and "X-Error-Code" not in err.value.headers
    assert ("GET", "/api/whatever") in fresh_hub.requests


# -- the real client ---------------------------------------------------------------------
def test_download_into_empty_cache_builds_the_real_layout(hub_server, hrnet_hf_cache, hrnet_weights):
    repo = caches.hf_repo_dir(hrnet_hf_cache, HRNET_REPO)
    sha256 = hashlib.sha256(hrnet_weights).hexdigest()
    commit = hub_server.commit(HRNET_REPO)
    assert (repo / "refs" / "main").read_text() == commit
    link = repo / "snapshots" / commit / "model.safetensors"
    assert link.is_symlink() and os.readlink(link) == f"../../blobs/{sha256}"
    blob = repo / "blobs" / sha256
    assert blob.stat().st_size == len(hrnet_weights)
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == sha256
    assert ("HEAD", f"/{HRNET_REPO}/resolve/main/model.safetensors") in hub_server.requests
    assert ("GET", f"/{HRNET_REPO}/resolve/main/model.safetensors") in hub_server.requests
    assert caches.try_to_load_from_cache_subprocess(hrnet_hf_cache, HRNET_REPO, "model.safetensors") == str(link)


def test_non_lfs_file_is_stored_under_its_git_blob_id(hub_server, tmp_path):
    snap = caches.populate_hf_cache(hub_server.url, tmp_path, TINY_REPO, "config.json")
    assert os.readlink(snap) == f"../../blobs/{git_blob_id(TINY_CONFIG)}"
    assert snap.read_bytes() == TINY_CONFIG


@pytest.mark.parametrize("repo_id, filename, revision, error", [
    (TINY_REPO, "pytorch_model.bin", "main", "RemoteEntryNotFoundError"),
    ("org/absent", "model.safetensors", "main", "RepositoryNotFoundError"),
    (TINY_REPO, "model.safetensors", "v9", "RevisionNotFoundError"),
])
def test_client_errors(hub_server, tmp_path, repo_id, filename, revision, error):
    proc = caches.hf_download_subprocess(hub_server.url, tmp_path, repo_id, filename, revision)
    assert proc.returncode == 1 and caches.last_json(proc)["error"] == error


def test_missing_file_writes_the_no_exist_marker(hub_server, tmp_path):
    proc = caches.hf_download_subprocess(hub_server.url, tmp_path, TINY_REPO, "pytorch_model.bin")
    assert caches.last_json(proc)["error"] == "RemoteEntryNotFoundError"
    marker = caches.hf_repo_dir(tmp_path, TINY_REPO) / ".no_exist" / commit_sha(TINY_REPO) / "pytorch_model.bin"
    assert marker.is_file()
    assert caches.write_no_exist_marker(tmp_path, TINY_REPO, "pytorch_model.bin") == marker
    assert caches.try_to_load_from_cache_subprocess(tmp_path, TINY_REPO, "pytorch_model.bin") == "no_exist"


def test_portal_mode_is_not_a_hub(fresh_hub, tmp_path):
    fresh_hub.portal = True
    proc = caches.hf_download_subprocess(fresh_hub.url, tmp_path, TINY_REPO, "config.json")
    result = caches.last_json(proc)
    assert result["error"] == "LocalEntryNotFoundError" and "X-Repo-Commit" in result["message"]


def test_timm_loads_offline_from_the_populated_cache(hrnet_hf_cache, hub_server, clean_env):
    before = len(hub_server.requests)
    env = caches.hub_env(hub_server.url, hrnet_hf_cache, base=clean_env, offline=True)
    proc = caches.timm_load_subprocess("hrnet_w18", env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert caches.last_json(proc)["digest"] == weights.timm_weights_digest("hrnet_w18")
    assert len(hub_server.requests) == before  # offline: the server was never asked


def test_timm_offline_with_empty_cache_fails_fast(tmp_path, clean_env):
    env = caches.hub_env(None, tmp_path / "empty", base=clean_env, offline=True)
    proc = caches.timm_load_subprocess("hrnet_w18", env, timeout=120)
    assert proc.returncode != 0
    assert "huggingface_hub.errors.LocalEntryNotFoundError" in proc.stderr
    assert "cannot find the requested files in the local cache" in proc.stderr


# -- corruption helpers --------------------------------------------------------------------
def test_delete_blob_leaves_a_dangling_link(tiny_cache):
    blob = caches.delete_blob(tiny_cache, TINY_REPO, "model.safetensors")
    link = caches.hf_snapshot_path(tiny_cache, TINY_REPO, "model.safetensors")
    assert not blob.exists() and link.is_symlink() and not link.exists()
    assert caches.try_to_load_from_cache_subprocess(tiny_cache, TINY_REPO, "model.safetensors") is None


def test_truncate_blob(tiny_cache, tiny_weights):
    blob = caches.truncate_blob(tiny_cache, TINY_REPO, "model.safetensors")
    assert blob.stat().st_size == len(tiny_weights) // 2
    assert hashlib.sha256(blob.read_bytes()).hexdigest() != blob.name


def test_leave_incomplete(tiny_cache, tiny_weights):
    partial = caches.leave_incomplete(tiny_cache, TINY_REPO, "model.safetensors")
    sha256 = hashlib.sha256(tiny_weights).hexdigest()
    assert partial.parent.name == "blobs" and partial.name.startswith(sha256 + ".")
    assert partial.name.endswith(".incomplete") and partial.read_bytes() == tiny_weights[: len(tiny_weights) // 2]
    assert not (partial.parent / sha256).exists()
    assert not caches.hf_snapshot_path(tiny_cache, TINY_REPO, "model.safetensors").is_symlink()


def test_interrupted_download_for_real(fresh_hub, tmp_path):
    data = weights.tiny_safetensors_bytes(seed=1, shapes={"w": (512, 512)})  # 1 MiB
    served = fresh_hub.add_file("org/big", "model.safetensors", data)
    partial = caches.interrupt_hf_download(fresh_hub, tmp_path, "org/big", "model.safetensors")
    repo = caches.hf_repo_dir(tmp_path, "org/big")
    assert partial.parent == repo / "blobs" and partial.name.endswith(".incomplete")
    assert (repo / "refs" / "main").read_text() == served.commit
    assert not (repo / "blobs" / served.etag).exists()
    assert list((repo / "snapshots" / served.commit).iterdir()) == []


def test_remove_ref(tiny_cache):
    caches.remove_ref(tiny_cache, TINY_REPO)
    assert caches.try_to_load_from_cache_subprocess(tiny_cache, TINY_REPO, "config.json") is None


def test_lfs_pointer_replaces_content(tiny_cache, tiny_weights):
    link = caches.hf_snapshot_path(tiny_cache, TINY_REPO, "model.safetensors")
    written = caches.write_lfs_pointer(link)
    assert written == link.resolve() and written.parent.name == "blobs"
    text = link.read_text()
    assert text.startswith("version https://git-lfs.github.com/spec/v1\n")
    assert f"oid sha256:{hashlib.sha256(tiny_weights).hexdigest()}\nsize {len(tiny_weights)}\n" in text


def test_shared_store_hop_still_resolves(tiny_cache, tiny_weights):
    store = caches.move_blob_to_shared_store(tiny_cache, TINY_REPO, "model.safetensors")
    blob = caches.hf_blob_path(tiny_cache, TINY_REPO, "model.safetensors")
    assert blob.is_symlink() and blob.resolve() == store.resolve()
    assert store.parent.parent == tiny_cache / "blobs" and not store.is_symlink()
    link = caches.hf_snapshot_path(tiny_cache, TINY_REPO, "model.safetensors")
    assert link.read_bytes() == tiny_weights
    assert caches.try_to_load_from_cache_subprocess(tiny_cache, TINY_REPO, "model.safetensors") == str(link)


# -- small pieces ----------------------------------------------------------------------------
def test_tiny_safetensors_is_valid_and_digest_is_stable():
    data = weights.tiny_safetensors_bytes(seed=3)
    header = weights.safetensors_header(data)
    assert header["layer.weight"]["shape"] == [4, 4]
    assert weights.safetensors_digest(data) == weights.safetensors_digest(weights.tiny_safetensors_bytes(seed=3))
    assert weights.safetensors_digest(data) != weights.safetensors_digest(weights.tiny_safetensors_bytes(seed=4))
    with pytest.raises(ValueError):
        weights.safetensors_header(caches.lfs_pointer_text(data))


def test_clean_environ_drops_cache_and_hub_settings(tmp_path):
    base = {"PATH": "/usr/bin", "HOME": "/home/u", "HF_HOME": "/x", "HF_TOKEN": "t", "TORCH_HOME": "/t",
            "XDG_CACHE_HOME": "/c", "TRANSFORMERS_OFFLINE": "1", "HUGGINGFACE_HUB_CACHE": "/h",
            "https_proxy": "http://p:1", "KEEP": "1"}
    assert caches.clean_environ(tmp_path, base) == {"PATH": "/usr/bin", "HOME": str(tmp_path), "KEEP": "1"}


def test_server_stops_and_releases_its_port():
    hub = HubServer()
    url = hub.url
    hub.stop()
    hub.stop()  # idempotent
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/api/models/x", timeout=2)


def test_snapshot_download_writes_the_tree_listing(hub_server, tmp_path, tiny_weights):
    folder = caches.populate_hf_snapshot(hub_server.url, tmp_path, TINY_REPO)
    commit = commit_sha(TINY_REPO)
    assert folder == caches.hf_repo_dir(tmp_path, TINY_REPO) / "snapshots" / commit
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    tree = json.loads((caches.hf_repo_dir(tmp_path, TINY_REPO) / "trees" / f"{commit}.json").read_text())
    assert tree["files"]["model.safetensors"]["lfs_size"] == len(tiny_weights)
    assert tree["files"]["config.json"] == {"size": len(TINY_CONFIG), "blob_id": git_blob_id(TINY_CONFIG)}


def test_fault_switches(fresh_hub):
    fresh_hub.fail_status = 503
    assert _resolve(fresh_hub, TINY_REPO, "config.json")[0] == 503
    fresh_hub.fail_status = None
    fresh_hub.delay = 0.3
    started = time.monotonic()
    assert _resolve(fresh_hub, TINY_REPO, "config.json")[0] == 200
    assert time.monotonic() - started >= 0.3


@pytest.mark.slow
def test_torchvision_checkpoint_loads_offline_under_its_real_name(tmp_path, clean_env):
    torch_home = tmp_path / "torch"
    path = caches.place_torchvision_checkpoint(torch_home, "densenet121")
    assert path == torch_home / "hub" / "checkpoints" / "densenet121-a639ec97.pth"
    env = {**clean_env, "TORCH_HOME": str(torch_home), "https_proxy": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "1"}
    proc = caches.torchvision_load_subprocess("densenet121", env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert caches.last_json(proc)["digest"] == weights.torchvision_weights_digest("densenet121")
