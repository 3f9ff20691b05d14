"""Files left root-owned by sudo runs, and datasets on mounts that are missing or hung.

Ownership: the test runs as root and makes real root-owned files in a project that belongs to a
throwaway user (created with `useradd`, removed afterwards); what the check reports is then
confirmed by that user itself, in a subprocess running as that user.
Mounts: a real tmpfs mounted and unmounted, and a real FUSE mount whose server never answers
(the kernel's /dev/fuse with nobody serving it: every stat on it blocks, like a dead NFS server).
"""
from __future__ import annotations

import ctypes
import json
import os
import pwd
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from checks.system import mounts, ownership
from doctor.engine import verdicts
from core.model import FAIL, OK, WARN
from tests.test_system_support import as_list, launch_for, make_ctx, one, repo, settings, throwaway_user  # noqa: F401

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="root-owned files, other users and mounts need root")

_AS_USER = r"""
import json, os, sys
out = {}
for p in sys.argv[1:]:
    out[p] = os.access(p, os.W_OK)
try:
    os.unlink(sys.argv[1])
    out["deleted"] = True
except OSError as e:
    out["deleted"] = e.strerror
print(json.dumps(out))
"""


def as_user(user: str, *paths) -> dict:
    """Ask the user itself: may it write each path, and may it delete the first one?"""
    # /usr/bin/python3: the venv's interpreter lives under /root, which the user may not enter
    p = subprocess.run(["/usr/bin/python3", "-c", _AS_USER, *map(str, paths)], user=user, capture_output=True,
                       text=True, timeout=30, check=True, cwd="/")
    return json.loads(p.stdout)


@pytest.fixture
def project(throwaway_user):
    """A project owned by the throwaway user, with what earlier sudo runs left root-owned."""
    base = Path(tempfile.mkdtemp(prefix="mpf-own-"))
    os.chmod(base, 0o755)
    pw = pwd.getpwnam(throwaway_user)
    root = base / "project"
    ckpt_dir = root / "repos" / "reid" / "model" / "ft_net"
    run = root / "results" / "run_20260106_220807" / "reid_pcb_001"
    for d in (ckpt_dir, run, root / "repos" / "mnist", root / "repos" / "reid" / "data"):
        d.mkdir(parents=True)
    for f in (root / "repos" / "reid" / "train.py", root / "repos" / "mnist" / "train.py", run / "experiment.json"):
        f.write_text("x")
    subprocess.run(["chown", "-R", f"{pw.pw_uid}:{pw.pw_gid}", str(root)], check=True)
    # what `sudo ./train.sh` runs left behind: new files and a folder, created as root
    (run / "training.log").write_text("log")
    (ckpt_dir / "net_last.pth").write_bytes(b"w")
    root_dir = root / "repos" / "reid" / "data" / "cache"
    root_dir.mkdir()
    (root_dir / "features.npy").write_bytes(b"f")
    shared = root / "repos" / "reid" / "data" / "shared.txt"  # root-owned but world-writable: no problem
    shared.write_text("s")
    shared.chmod(0o666)
    yield root, throwaway_user, {"log": run / "training.log", "ckpt": ckpt_dir / "net_last.pth", "dir": root_dir,
                                 "npy": root_dir / "features.npy", "mine": root / "repos" / "reid" / "train.py",
                                 "shared": shared}
    subprocess.run(["rm", "-rf", str(base)], check=True)


def models():
    return {"reid": repo(["pcb"], path="repos/reid"), "mnist": repo(["mnist"], path="repos/mnist")}


def test_root_owned_files_seen_by_the_user_who_cannot_change_them(project):
    root, user, paths = project
    launch = launch_for(user=user, env=dict(os.environ, HOME="/nonexistent"))
    ctx = make_ctx(root, models(), settings(("reid", "pcb"), ("mnist", "mnist")), launch=launch)
    findings = as_list(ownership.check_ownership(ctx))
    by_root = {f.data["root"]: f for f in findings}
    results, reid = by_root[str(root / "results")], by_root[str(root / "repos" / "reid")]
    assert set(by_root) == {str(root / "results"), str(root / "repos" / "reid")}
    reid_id, mnist_id = (e.id for e in ctx.plan.experiments)
    assert results.status == FAIL and set(results.experiments) == {reid_id, mnist_id}
    assert reid.status == FAIL and reid.experiments == (reid_id,)
    assert results.data["count"] == 1 and reid.data["count"] == 3  # log; checkpoint, folder and file in it
    assert set(reid.data["examples"]) == {str(paths["ckpt"]), str(paths["dir"]), str(paths["npy"])}
    group = pwd.getpwnam(user).pw_gid
    import grp
    assert reid.fix == (f"sudo chown -R {user}:{grp.getgrgid(group).gr_name} {root / 'repos' / 'reid'}",)
    # the user agrees: it may write none of what was reported, may write its own and the shared file
    seen = as_user(user, paths["npy"], paths["ckpt"], paths["log"], paths["dir"], paths["mine"], paths["shared"])
    assert seen["deleted"] == "Permission denied"  # features.npy, inside the root-owned folder
    assert [seen[str(paths[k])] for k in ("npy", "ckpt", "log", "dir")] == [False] * 4
    assert seen[str(paths["mine"])] and seen[str(paths["shared"])]
    # the fix, run the way sudo would run it, gives everything back
    for f in findings:
        subprocess.run(shlex.split(f.fix[0])[1:], check=True)
    assert one(as_list(ownership.check_ownership(ctx)), "system.ownership.ok").status == OK
    assert as_user(user, paths["npy"])["deleted"] is True


def test_under_sudo_root_owned_files_only_warn_and_the_walk_is_bounded(project, monkeypatch):
    root, user, _ = project
    many = root / "results" / "run_20260107_010101"
    many.mkdir()
    for i in range(120):
        (many / f"f{i}.csv").write_text("")
    monkeypatch.setattr(ownership, "OWNERSHIP_LIMIT", 50)
    launch = launch_for(user="root", invoking=user, env=dict(os.environ, HOME="/root"))
    ctx = make_ctx(root, models(), settings(("reid", "pcb")), launch=launch)
    findings = as_list(ownership.check_ownership(ctx))
    results = next(f for f in findings if f.data["root"] == str(root / "results"))
    assert results.status == WARN and results.experiments == ()
    assert results.data["truncated"] and results.data["seen"] == 50 and "stopped after 50 entries" in results.detail
    assert not [v for v in verdicts(ctx.plan.experiments, findings) if v.verdict == "blocked"]


def test_nothing_to_say_when_the_invoking_user_is_root(tmp_path):
    assert ownership.check_ownership(make_ctx(tmp_path / "p", models(), settings(("reid", "pcb")))) is None


# --------------------------------------------------------------------------------------------- mounts

def dataset_models(path):
    return {"reid": repo(["pcb"], {"pcb": [{"path": str(path), "kind": "dataset"}]}, path="repos/reid")}


def test_dataset_on_an_fstab_mount_point_that_is_not_mounted(tmp_path, monkeypatch):
    mp = tmp_path / "datasets"
    mp.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# <file system> <mount point> <type> <options> <dump> <pass>\n"
                     f"UUID=0a1b /  ext4 defaults 0 1\n"
                     f"tmpfs {mp} tmpfs size=8m,noauto 0 0\n/swapfile none swap sw 0 0\n")
    monkeypatch.setattr(mounts, "FSTAB", str(fstab))
    dataset = mp / "Market-1501"
    ctx = make_ctx(tmp_path / "p", dataset_models(dataset), settings(("reid", "pcb")))
    f = one(as_list(mounts.check_dataset_mounts(ctx)), "system.mount.missing")
    assert f.status == FAIL and f.experiments == (ctx.plan.experiments[0].id,) and f.fix == (f"sudo mount {mp}",)
    # mount it for real (what `sudo mount` does with that fstab line): now it is fine
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mp)], check=True)
    try:
        dataset.mkdir()
        assert one(as_list(mounts.check_dataset_mounts(ctx)), "system.mount.ok").data["paths"] == [str(dataset)]
    finally:
        subprocess.run(["umount", str(mp)], check=True)


@pytest.fixture
def hung_mount(tmp_path):
    """A FUSE mount nobody serves: the kernel waits for an answer to every request on it."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    mp = tmp_path / "nfs"
    mp.mkdir()
    fd = os.open("/dev/fuse", os.O_RDWR)
    libc = ctypes.CDLL(None, use_errno=True)
    opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0".encode()
    if libc.mount(b"deadserver:/export", str(mp).encode(), b"fuse", 0, opts) != 0:
        os.close(fd)
        pytest.skip(f"cannot mount fuse here: {os.strerror(ctypes.get_errno())}")
    yield mp
    os.close(fd)  # aborts the connection: the blocked stat threads return
    libc.umount2(str(mp).encode(), 2)  # MNT_DETACH


def test_dataset_on_a_mount_that_does_not_answer(hung_mount, tmp_path):
    dataset = hung_mount / "cifar10"
    ctx = make_ctx(tmp_path / "p", dataset_models(dataset), settings(("reid", "pcb")), timeout=1.0)
    t0 = time.monotonic()
    f = one(as_list(mounts.check_dataset_mounts(ctx)), "system.mount.stale")
    assert time.monotonic() - t0 < 3
    assert f.status == FAIL and f.data["mount_point"] == str(hung_mount) and "no answer within 1 s" in f.detail
    assert "deadserver:/export fuse" in f.detail
    assert f.fix == (f"sudo umount -l {hung_mount} && sudo mount {hung_mount}",)


def test_cache_group_does_not_hang_on_a_dead_mount(hung_mount, tmp_path):
    """The cache group stats dataset paths too: bounded, reported as broken, the doctor goes on."""
    from core import hubcache

    t0 = time.monotonic()
    state = hubcache.inspect_path(str(hung_mount / "cifar10"), "dataset", timeout=1.0)
    assert time.monotonic() - t0 < 3
    assert (state.status, state.problem) == ("broken", "no-answer") and "no answer within 1 s" in state.detail
