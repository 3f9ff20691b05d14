"""The needs lock: merging observations, stable diff-friendly JSON, two writers at once, ownership for a
sudo user, links planted in its place, and the reading side (need sources, changed weights)."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import needslock
from core.needslock import LockError, Seen

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "a" * 40


def _needs(sha="1" * 64, folder="data/Market/pytorch", ckpt_sha="2" * 64):
    return {"observed": True,
            "hub_files": [{"repo": "timm/hrnet_w18.ms_aug_in1k", "repo_type": "model", "revision": "main", "commit": COMMIT,
                           "file": "model.safetensors", "size": 10, "sha256": sha, "path": "/cache/x", "cache": "/cache"}],
            "checkpoints": [{"file": "resnet18-f37072fd.pth", "size": 5, "sha256": ckpt_sha, "path": "/t/x"}],
            "folders": [{"path": "/r/" + folder, "relative": folder}],
            "files": [], "hosts": [{"host": "127.0.0.1", "port": 80}],
            "interpreters": [{"executable": "/env/bin/python", "version": "3.11.7", "observable": True,
                              "torch": {"version": "2.14.1", "cuda": "13.0", "arch_list": ["sm_80"]}}]}


def test_merge_unions_replaces_same_identity_and_writes_stable_json():
    lock = needslock.merge({}, "reid", "hrnet18", _needs(), Seen("run_1/a", "t1", "m"))
    lock = needslock.merge(lock, "reid", "hrnet18", _needs(sha="3" * 64, folder="data/other"), Seen("run_2/b", "t2", "m"))
    slot = lock["repos"]["reid"]["hrnet18"]
    (hf,) = slot["hub_files"]  # same repo, revision, file: the newer observation
    assert hf["sha256"] == "3" * 64 and hf["last_seen"]["run"] == "run_2/b" and "path" not in hf
    assert [f["path"] for f in slot["folders"]] == ["data/Market/pytorch", "data/other"]  # union, sorted
    assert slot["folders"][0]["last_seen"]["run"] == "run_1/a"
    text = needslock.dumps(lock)
    assert needslock.dumps(json.loads(text)) == text and text.endswith("\n")
    assert list(json.loads(text)) == sorted(json.loads(text))


def test_two_runners_merging_at_once_both_land(tmp_path):
    path = tmp_path / "needs.lock.json"
    code = ("import sys; from core import needslock as n\n"
            "for i in range(15):\n"
            "    n.update(sys.argv[1], 'r', sys.argv[2] + str(i), {'folders': [{'path': '/d', 'relative': 'd'}]},"
            " n.Seen('run/x', 't'))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), who], cwd=ROOT) for who in ("a", "b")]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    models = json.loads(path.read_text())["repos"]["r"]
    assert sorted(models) == sorted([f"a{i}" for i in range(15)] + [f"b{i}" for i in range(15)])
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".needs.lock.")]  # no temporary file left


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root")
def test_written_as_root_for_a_sudo_user_the_lock_is_theirs(tmp_path):
    path = tmp_path / "needs.lock.json"
    needslock.update(str(path), "r", "m", _needs(), Seen("run/x", "t"), owner=(54321, 54322))
    for p in (path, Path(str(path) + ".lock")):
        st = os.stat(p)
        assert (st.st_uid, st.st_gid) == (54321, 54322)


def test_a_link_planted_at_the_lock_is_not_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "needs.lock.json").symlink_to(victim)
    with pytest.raises(LockError, match="symbolic link"):
        needslock.update(str(tmp_path / "needs.lock.json"), "r", "m", _needs(), Seen("run/x", "t"))
    (tmp_path / "needs.lock.json.lock").symlink_to(victim)
    (tmp_path / "needs.lock.json").unlink()
    with pytest.raises(OSError):
        needslock.update(str(tmp_path / "needs.lock.json"), "r", "m", _needs(), Seen("run/x", "t"))
    assert victim.read_text() == "keep"
    # a hard link to another file as the flock file: refused, never given to the user
    (tmp_path / "needs.lock.json.lock").unlink()
    os.link(victim, tmp_path / "needs.lock.json.lock")
    with pytest.raises(LockError, match="one link"):
        needslock.update(str(tmp_path / "needs.lock.json"), "r", "m", _needs(), Seen("run/x", "t"), owner=(54321, 54322))
    assert victim.stat().st_uid == os.geteuid() and victim.read_text() == "keep"
    # a FIFO in the lock's place is an unusable lock, not a hang
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(LockError):
        needslock.read(str(tmp_path / "fifo.json"))


def test_an_unreadable_lock_is_one_line(tmp_path):
    bad = tmp_path / "needs.lock.json"
    bad.write_text("{nope")
    with pytest.raises(LockError) as e:
        needslock.read(str(bad))
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    assert needslock.read(str(tmp_path / "absent.json"))["repos"] == {}


def test_locked_needs_are_sources_with_their_run_and_changed_weights_are_found(tmp_path):
    data, other = b"weights", b"other weights"
    lock = needslock.merge({}, "reid", "hrnet18", _needs(sha=hashlib.sha256(data).hexdigest(),
                                                      ckpt_sha=hashlib.sha256(data).hexdigest()),
                           Seen("run_20260101_000000/reid_hrnet18_001", "t"))
    specs = needslock.specs(lock, "reid", "hrnet18")
    assert ("hf", {"hf": "timm/hrnet_w18.ms_aug_in1k", "files": ["model.safetensors"], "revision": COMMIT},
            "observed in run_20260101_000000/reid_hrnet18_001") in specs
    assert {k for k, _, _ in specs} == {"hf", "url", "path", "python"}
    assert ("url", {"url": "https://download.pytorch.org/models/resnet18-f37072fd.pth", "file": "resnet18-f37072fd.pth"},
            "observed in run_20260101_000000/reid_hrnet18_001") in specs
    assert needslock.specs(lock, "reid", "other") == []

    hf, th = tmp_path / "hub", tmp_path / "torch"
    snap = hf / "models--timm--hrnet_w18.ms_aug_in1k" / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (th / "checkpoints").mkdir(parents=True)
    sha = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()  # noqa: E731
    pairs = [("reid", "hrnet18")]
    assert needslock.changed(lock, pairs, str(hf), str(th), sha) == []  # missing is not "changed"
    (snap / "model.safetensors").write_bytes(data)
    (th / "checkpoints" / "resnet18-f37072fd.pth").write_bytes(data)
    assert needslock.changed(lock, pairs, str(hf), str(th), sha) == []
    (snap / "model.safetensors").write_bytes(other)
    (ch,) = needslock.changed(lock, pairs, str(hf), str(th), sha)
    assert ch.what == "timm/hrnet_w18.ms_aug_in1k@main:model.safetensors" and ch.sha256 == hashlib.sha256(other).hexdigest()
    assert ch.provenance == "observed in run_20260101_000000/reid_hrnet18_001"


def test_the_doctor_warns_on_changed_weights_and_fails_under_locked(tmp_path, monkeypatch):
    import argparse
    import dataclasses

    from checks.needslock import check_locked_weights
    from doctor.operations import make_context

    hf = tmp_path / "hub"
    snap = hf / "models--timm--hrnet_w18.ms_aug_in1k" / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (snap / "model.safetensors").write_bytes(b"weights")
    monkeypatch.setenv("HF_HUB_CACHE", str(hf))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "repos" / "reid").mkdir(parents=True)
    (tmp_path / "models_config.json").write_text(json.dumps({"models": {"reid": {
        "path": "repos/reid", "train_script": "./train.sh", "models": ["hrnet18", "pcb"], "model_flag": "-n"}}}))
    (tmp_path / "s.json").write_text(json.dumps({"experiment_name": "s", "experiments": [
        {"mode": "default", "repo": "reid", "model": m, "hyperparameters": {}} for m in ("hrnet18", "pcb")]}))
    args = argparse.Namespace(settings=str(tmp_path / "s.json"), models_config=str(tmp_path / "models_config.json"),
                              project_root=str(tmp_path), launch="current", only=None, timeout=None,
                              probe_timeout=None, verify=False, deep=False)
    ctx = make_context(args)
    assert check_locked_weights(ctx) is None  # no lock beside the registry
    needslock.update(str(tmp_path / "needs.lock.json"), "reid", "hrnet18", _needs(sha=hashlib.sha256(b"weights").hexdigest()),
                     Seen("run_20260101_000000/reid_hrnet18_001", "t"))
    assert check_locked_weights(ctx) == []
    (snap / "model.safetensors").write_bytes(b"other weights")
    (f,) = check_locked_weights(make_context(args))
    assert (f.id, f.status, f.experiments) == ("cache.locked.changed", "warn", ("reid_hrnet18_001",))
    assert "changed since the recorded runs" in f.title and "observed in run_20260101_000000/reid_hrnet18_001" in f.detail
    assert f.fix[-1].startswith("mutation-doctor prefetch")
    ctx = make_context(args)
    ctx.options = dataclasses.replace(ctx.options, locked=True)
    (f,) = check_locked_weights(ctx)
    assert f.status == "fail" and f.blocks
