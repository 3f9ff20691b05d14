"""The cache group against caches written by the real huggingface_hub client and broken for real."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from core import hubcache
from core.hubcache import BROKEN, MISSING, PRESENT
from tests.support import HRNET_REPO, TINY_REPO, caches

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache(tiny_cache):
    """org/tiny downloaded by the real client: a private copy to break."""
    return tiny_cache


def inspect(cache, filename="model.safetensors", **kw):
    return hubcache.inspect_hf_file(str(cache), TINY_REPO, filename, **kw)


def test_present_agrees_with_try_to_load_from_cache(cache):
    for name in ("config.json", "model.safetensors"):
        state = inspect(cache, name)
        assert state.status == PRESENT
        assert state.path == caches.try_to_load_from_cache_subprocess(cache, TINY_REPO, name)
    assert inspect(cache, "missing.bin").status == MISSING
    assert caches.try_to_load_from_cache_subprocess(cache, TINY_REPO, "missing.bin") is None


def test_dangling_snapshot_link(cache):
    caches.delete_blob(cache, TINY_REPO, "model.safetensors")
    state = inspect(cache)
    assert (state.status, state.problem) == (BROKEN, "dangling")


def test_missing_ref_cannot_resolve_offline(cache):
    caches.remove_ref(cache, TINY_REPO)
    state = inspect(cache)
    assert (state.status, state.problem) == (MISSING, "no-ref") and "refs/main" in state.detail


def test_truncated_blob_is_caught_by_verify(cache, tmp_path):
    caches.truncate_blob(cache, TINY_REPO, "model.safetensors")
    assert inspect(cache).status == PRESENT  # structure alone looks fine, as scan_cache_dir says
    memo = hubcache.HashMemo(str(tmp_path / "memo.json"))
    state = inspect(cache, verify=True, memo=memo)
    assert (state.status, state.problem) == (BROKEN, "hash-mismatch")


def test_verify_is_memoised_on_path_size_mtime(cache, tmp_path):
    memo_path = tmp_path / "memo.json"
    memo = hubcache.HashMemo(str(memo_path))
    assert inspect(cache, verify=True, memo=memo).status == PRESENT
    memo.save()
    blob = caches.hf_blob_path(cache, TINY_REPO, "model.safetensors")
    data = json.loads(memo_path.read_text())
    assert os.path.realpath(blob) in data
    # a poisoned memo entry with the same size and mtime is trusted (no second hash) ...
    key, digest = data[os.path.realpath(blob)]
    data[os.path.realpath(blob)] = [key, "0" * 64]
    memo_path.write_text(json.dumps(data))
    state = inspect(cache, verify=True, memo=hubcache.HashMemo(str(memo_path)))
    assert state.problem == "hash-mismatch"
    # ... and a touched file is hashed again
    os.utime(os.path.realpath(blob), None)
    assert inspect(cache, verify=True, memo=hubcache.HashMemo(str(memo_path))).status == PRESENT


def test_size_against_tree_listing(cache):
    commit = caches.hf_commit(cache, TINY_REPO)
    trees = caches.hf_repo_dir(cache, TINY_REPO) / "trees"
    trees.mkdir(exist_ok=True)
    trees.joinpath(f"{commit}.json").write_text(json.dumps(
        {"format_version": 1, "files": {"model.safetensors": {"size": 1, "blob_id": "x", "lfs_size": 999999}}}))
    state = inspect(cache)
    assert (state.status, state.problem) == (BROKEN, "size-mismatch") and "999999" in state.detail


def test_incomplete_download_leftovers_for_real(fresh_hub, tmp_path):
    cache = tmp_path / "hub"
    caches.interrupt_hf_download(fresh_hub, cache, TINY_REPO, "model.safetensors")
    state = inspect(cache)
    assert state.status != PRESENT
    assert caches.try_to_load_from_cache_subprocess(cache, TINY_REPO, "model.safetensors") is None
    assert [p.endswith(".incomplete") for p in state.leftovers] == [True]


def test_leave_incomplete_is_reported(cache, clean_env, tmp_path):
    left = caches.leave_incomplete(cache, TINY_REPO, "model.safetensors")
    state = inspect(cache)
    assert state.leftovers == (str(left),)
    # the doctor names the leftover and the exact rm that clears it
    project = make_project(tmp_path, [{"hf": TINY_REPO, "files": ["config.json", "model.safetensors"]}])
    p, data = doctor(project, dict(clean_env, HF_HUB_CACHE=str(cache)))
    f = by_id(data)["cache.leftovers"]
    assert f["status"] == "warn" and f["fix"] == [f"rm -f {left}"]


def test_no_exist_marker(cache):
    caches.write_no_exist_marker(cache, TINY_REPO, "pytorch_model.bin")
    state = inspect(cache, "pytorch_model.bin")
    assert (state.status, state.problem) == (MISSING, "no-exist-marker")
    assert caches.try_to_load_from_cache_subprocess(cache, TINY_REPO, "pytorch_model.bin") == "no_exist"


def test_shared_store_two_hops(cache, tmp_path):
    caches.move_blob_to_shared_store(cache, TINY_REPO, "model.safetensors")
    memo = hubcache.HashMemo(str(tmp_path / "m.json"))
    state = inspect(cache, verify=True, memo=memo)
    assert state.status == PRESENT and "/blobs/" in state.blob
    assert caches.try_to_load_from_cache_subprocess(cache, TINY_REPO, "model.safetensors") == state.path


def test_lfs_pointer_instead_of_blob(cache):
    blob = caches.hf_blob_path(cache, TINY_REPO, "model.safetensors")
    caches.write_lfs_pointer(os.path.realpath(blob))
    assert inspect(cache).problem == "lfs-pointer"


def test_torch_checkpoint_name_hash(tmp_path):
    torch_home = tmp_path / "torch"
    path = caches.place_torchvision_checkpoint(torch_home, "densenet121")
    hub = str(torch_home / "hub")
    assert hubcache.inspect_torch_checkpoint(hub, path.name).status == PRESENT
    memo = hubcache.HashMemo(None)
    # generated weights cannot match the real file's sha256 prefix: --verify says so
    assert hubcache.inspect_torch_checkpoint(hub, path.name, verify=True, memo=memo).problem == "hash-mismatch"
    good = Path(hub, "checkpoints", f"mine-{memo.sha256(str(path))[:8]}.pth")
    shutil.copy(path, good)
    assert hubcache.inspect_torch_checkpoint(hub, good.name, verify=True, memo=memo).status == PRESENT
    assert hubcache.inspect_torch_checkpoint(hub, "resnet50-0676ba61.pth").status == MISSING


def test_local_paths_and_interpreters(tmp_path):
    d = tmp_path / "data"
    assert hubcache.inspect_path(str(d)).status == MISSING
    d.mkdir()
    assert hubcache.inspect_path(str(d)).problem == "empty"
    caches.write_lfs_pointer(d / "train.csv", b"a,b\n" * 1000)
    assert hubcache.inspect_path(str(d)).problem == "lfs-pointer"
    (d / "train.csv").write_text("a,b\n1,2\n")
    assert hubcache.inspect_path(str(d)).status == PRESENT
    assert hubcache.inspect_python(sys.executable).status == PRESENT
    assert hubcache.inspect_python(str(tmp_path / "nope" / "python")).status == MISSING
    (tmp_path / "py").write_text("#!/bin/sh\n")
    assert hubcache.inspect_python(str(tmp_path / "py")).problem == "not-executable"


# ---- the doctor end to end: registry needs, launch contexts, fixes, prefetch -------------------------

def make_project(tmp_path, needs):
    repo = tmp_path / "project" / "repos" / "r"
    repo.mkdir(parents=True)
    (repo / "train.sh").write_text("#!/bin/sh\necho ok\n")
    (repo / "train.sh").chmod(0o755)  # a runnable script: the settings group checks it
    reg = {"models": {"r": {"path": "repos/r", "train_script": "./train.sh", "models": ["m"], "model_flag": "-n",
                            "supported_hyperparams": {}, "requires": {"m": needs}}}}
    (tmp_path / "project" / "models.json").write_text(json.dumps(reg))
    (tmp_path / "project" / "s.json").write_text(json.dumps(
        {"experiments": [{"mode": "default", "repo": "r", "model": "m", "hyperparameters": {}}]}))
    return tmp_path / "project"


def doctor(project, env, *args, verb=None):
    argv = [sys.executable, "-m", "doctor.cli"] + ([verb] if verb else []) + [
        "-ec", "s.json", "--models-config", "models.json", "--project-root", str(project),
        "--only", "settings,cache", "--json", *args]
    p = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode in (0, 1), p.stderr[-3000:]
    return p, (json.loads(p.stdout) if p.stdout.strip().startswith("{") else None)


def by_id(data):
    return {f["id"]: f for f in data["findings"]}


@pytest.mark.slow
def test_timm_model_present_means_it_really_loads_offline(hrnet_hf_cache, clean_env, tmp_path):
    project = make_project(tmp_path, [{"timm": "hrnet_w18"}])
    env = dict(clean_env, HF_HUB_CACHE=str(hrnet_hf_cache), HF_HUB_OFFLINE="1")
    p, data = doctor(project, env)
    assert data["experiments"][0]["verdict"] == "pass", data["findings"]
    assert "cache.hub.present" in by_id(data)
    load = caches.timm_load_subprocess("hrnet_w18", env)
    assert load.returncode == 0, load.stderr[-2000:]
    # and the same launch with an empty cache is blocked, as the real load fails
    empty = dict(env, HF_HUB_CACHE=str(tmp_path / "empty"))
    p, data = doctor(project, empty)
    assert p.returncode == 1 and data["experiments"][0]["blocked_by"] == ["cache.hub.missing"]
    load = caches.timm_load_subprocess("hrnet_w18", empty)
    assert load.returncode != 0 and "LocalEntryNotFoundError" in load.stderr


def test_sudo_launch_moves_the_cache_and_names_where_weights_are(hrnet_hf_cache, clean_env, tmp_path):
    """The incident: weights in the user's cache, the sudo-launched process looks in /root's."""
    project = make_project(tmp_path, [{"timm": "hrnet_w18"}])
    home = Path(clean_env["HOME"])
    user_cache = home / ".cache" / "huggingface" / "hub"
    user_cache.parent.mkdir(parents=True)
    shutil.copytree(hrnet_hf_cache, user_cache, symlinks=True)
    p, data = doctor(project, clean_env)
    assert data["experiments"][0]["verdict"] == "pass"
    p, data = doctor(project, clean_env, "--launch", "sudo")
    assert data["launch"]["home"] == "/root"
    assert data["launch"]["hf_cache"] == "/root/.cache/huggingface/hub"
    if Path("/root/.cache/huggingface/hub/models--timm--hrnet_w18.ms_aug_in1k").exists():
        pytest.skip("root's own cache holds hrnet_w18 on this machine")
    missing = by_id(data)["cache.hub.missing"]
    assert str(user_cache) in missing["detail"]
    assert any(f"HF_HUB_CACHE={user_cache}" in fix for fix in missing["fix"])
    assert any(fix.startswith("sudo --preserve-env=HF_HUB_CACHE,HF_HUB_OFFLINE /") and "mutation-run" in fix
               for fix in missing["fix"])
    assert missing["data"]["found_elsewhere"] == [str(user_cache)]


def test_prefetch_fills_the_launch_cache_and_the_doctor_agrees(fresh_hub, clean_env, tmp_path):
    project = make_project(tmp_path, [{"hf": TINY_REPO, "files": ["config.json", "model.safetensors"]}])
    env = dict(clean_env, HF_ENDPOINT=fresh_hub.url, HF_HUB_DISABLE_TELEMETRY="1")
    p, data = doctor(project, env)
    assert data["experiments"][0]["verdict"] == "blocked"
    p, out = doctor(project, env, verb="prefetch")
    assert p.returncode == 0, p.stderr
    assert out["missing_after"] == [] and all(d["ok"] for d in out["downloads"])
    p, data = doctor(project, env)
    assert data["experiments"][0]["verdict"] == "pass"
    assert Path(clean_env["HOME"], ".cache", "huggingface", "hub", "models--org--tiny").is_dir()
    p, out = doctor(project, env, verb="prefetch")  # idempotent: nothing left to fetch
    assert out["downloads"] == []


def test_prefetch_reports_a_hub_that_lacks_the_file(fresh_hub, clean_env, tmp_path):
    project = make_project(tmp_path, [{"hf": TINY_REPO, "files": ["nope.bin"]}])
    env = dict(clean_env, HF_ENDPOINT=fresh_hub.url)
    p, out = doctor(project, env, verb="prefetch")
    assert p.returncode == 1 and out["missing_after"] and "EntryNotFound" in out["downloads"][0]["error"]


def test_broken_path_and_python_needs_block_with_fixes(clean_env, tmp_path):
    project = make_project(tmp_path, [{"path": "data/market", "kind": "dataset"},
                                      {"python": str(tmp_path / "miniconda3" / "envs" / "reid" / "bin" / "python")}])
    p, data = doctor(project, clean_env)
    f = by_id(data)
    assert set(data["experiments"][0]["blocked_by"]) == {"cache.path.missing", "cache.python.missing"}
    assert f["cache.python.missing"]["fix"] == ["conda create -y -n reid python=3.10"]
    data_dir = project / "repos" / "r" / "data" / "market"
    data_dir.mkdir(parents=True)
    caches.write_lfs_pointer(data_dir / "train.zip", b"PK" * 1000)
    p, data = doctor(project, clean_env)
    assert "git -C" in by_id(data)["cache.path.broken"]["fix"][0]


def test_unknown_timm_model_is_a_registry_error(clean_env, tmp_path):
    project = make_project(tmp_path, [{"timm": "no_such_model_xyz"}])
    p, data = doctor(project, clean_env)
    f = by_id(data)["cache.unresolved"]
    assert f["status"] == "fail" and "no_such_model_xyz" in f["detail"]


@pytest.fixture
def open_tmp():
    """A temp folder other users may traverse (pytest's own are 0700 and reset at each session start)."""
    path = Path(tempfile.mkdtemp(prefix="mp-shared-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_cache_the_doctor_cannot_read_is_a_warning_not_a_block(clean_env, open_tmp):
    """A doctor running as an unprivileged user, a cache only root may read: warn, don't block.

    The interpreter lives under /root here, so the process starts as root, loads what it needs
    with one warm-up run, then drops to `nobody` for the run that counts.
    """
    if os.getuid() != 0:
        pytest.skip("needs root to drop to another user")
    project = make_project(open_tmp, [{"timm": "hrnet_w18"}])
    locked = open_tmp / "locked"
    (locked / "hub").mkdir(parents=True)
    locked.chmod(0o700)
    home = open_tmp / "nobody-home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    for d, _, files in os.walk(project):
        os.chmod(d, 0o755)
    code = ("import contextlib, io, os, sys\n"
            "from doctor.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    main(sys.argv[1:])\n"
            "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
            "sys.exit(main(sys.argv[1:]))\n")

    def run_as_nobody(env, *extra):
        args = ["-ec", "s.json", "--models-config", "models.json", "--project-root", str(project), "--only", "cache",
                "--json", *extra]
        p = subprocess.run([sys.executable, "-c", code, *args], cwd=project, env=env, capture_output=True, text=True,
                           timeout=300)
        assert p.returncode in (0, 1, 3), p.stderr[-2000:]
        return json.loads(p.stdout)

    # nobody checks a sudo launch: root's cache (/root is 0700) cannot be inspected -> warn, not blocked
    data = run_as_nobody(dict(clean_env, HOME=str(home)), "--launch", "sudo")
    f = by_id(data)
    assert f["cache.unreadable"]["status"] == "warn" and "permission" in f["cache.unreadable"]["title"]
    assert any(fix.startswith("sudo /") for fix in f["cache.unreadable"]["fix"])
    assert data["experiments"][0]["verdict"] == "unverified"  # nothing it needs could be looked for
    # nobody launches as itself with a cache it may not read: the experiment would fail -> blocked
    data = run_as_nobody(dict(clean_env, HOME=str(home), HF_HUB_CACHE=str(locked / "hub")))
    assert data["experiments"][0]["blocked_by"] == ["cache.permission"]


@pytest.mark.slow
def test_deep_load_proves_what_the_structure_cannot(hrnet_hf_cache, clean_env, tmp_path):
    """A truncated blob looks complete to a structural check; --deep really loads it, offline."""
    project = make_project(tmp_path, [{"timm": "hrnet_w18"}])
    cache = tmp_path / "hub"
    shutil.copytree(hrnet_hf_cache, cache, symlinks=True)
    env = dict(clean_env, HF_HUB_CACHE=str(cache))
    p, data = doctor(project, env, "--deep")
    assert by_id(data)["cache.deep.loaded"]["status"] == "ok" and p.returncode == 0
    blob = Path(os.path.realpath(caches.hf_snapshot_path(cache, HRNET_REPO, "model.safetensors")))
    blob.chmod(0o644)
    with open(blob, "r+b") as f:
        f.truncate(blob.stat().st_size // 2)
    p, data = doctor(project, env, "--deep")
    f = by_id(data)
    assert "cache.hub.present" in f and f["cache.deep.load-failed"]["status"] == "fail"
    assert data["experiments"][0]["blocked_by"] == ["cache.deep.load-failed"]


def test_tilde_in_a_need_is_the_launched_process_home(clean_env, tmp_path):
    """train.sh hard-codes ~/miniconda3/envs/<env>/bin/python; under sudo `~` is /root."""
    project = make_project(tmp_path, [{"python": "~/mp-test-envs/reid/bin/python"}])
    py = Path(clean_env["HOME"], "mp-test-envs", "reid", "bin", "python")
    py.parent.mkdir(parents=True)
    py.symlink_to(sys.executable)
    p, data = doctor(project, clean_env)
    assert data["experiments"][0]["verdict"] == "pass"
    p, data = doctor(project, clean_env, "--launch", "sudo")
    missing = by_id(data)["cache.python.missing"]
    assert missing["data"]["path"] == "/root/mp-test-envs/reid/bin/python"


def test_prefetch_under_sudo_gives_the_files_back_to_the_user(fresh_hub, open_tmp):
    """`sudo -E mutation-doctor prefetch`: root writes into the user's cache, then hands it back."""
    from tests.support import sudo_user

    reason = sudo_user.skip_reason()
    if reason:
        pytest.skip(reason)
    with sudo_user.throwaway_user() as u:
        project = make_project(open_tmp, [{"hf": TINY_REPO, "files": ["config.json", "model.safetensors"]}])
        argv = ["sudo", "-n", "-E", sys.executable, "-m", "doctor.cli", "prefetch", "-ec", "s.json",
                "--models-config", "models.json", "--project-root", str(project), "--json"]
        p = u.run(argv, env=u.env(HF_ENDPOINT=fresh_hub.url, HF_HUB_DISABLE_TELEMETRY="1"), cwd=str(project),
                  timeout=120)
        assert p.returncode == 0, p.stderr[-2000:]
        assert json.loads(p.stdout)["missing_after"] == []
        cache = Path(u.home, ".cache", "huggingface", "hub", "models--org--tiny")
        assert (cache / "refs" / "main").is_file()
        owners = {(Path(d, n).lstat().st_uid) for d, dirs, files in os.walk(Path(u.home, ".cache"))
                  for n in dirs + files} | {Path(u.home, ".cache").lstat().st_uid}
        assert owners == {u.uid}
