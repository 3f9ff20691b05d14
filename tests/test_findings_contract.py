"""The finding-id contract: every id a check emits is declared in core.findings, in its group, and a
finding that holds an experiment back names the failure-catalogue cause explain will give.

Every registered check runs (doctor.engine.run_doctor, all groups) over real contexts: a healthy
cache, empty caches with the hubs refusing, broken caches with a black-holed hub, an offline
launch, a plain-sudo launch (simulated, HOME=/root) and a settings file full of mistakes.
The network goes to 127.0.0.1 only.
"""
import json
import os
import sys

import pytest

from core import findings, netprobe
from core.failures import cause_ids
from core.launch import build_launch_context
from core.needs.base import library_version
from core.resolve import Resolver
from core.vocab import FAIL
from doctor.engine import run_doctor
from tests.support import TINY_REPO, caches
from tests.support import netservers as ns
from tests.test_system_support import launch_for, make_ctx, repo

GROUPS = ("settings", "cache", "env", "network", "system")
MODELS = {"r": repo(["tiny", "tv", "data", "py"], path="repos/r", requires={
    "tiny": [{"hf": TINY_REPO, "files": ["config.json", "model.safetensors"]}],
    "tv": [{"torchvision": "resnet18", "weights": "IMAGENET1K_V1"}],
    "data": [{"path": "data/train", "kind": "dataset"}],
    "py": [{"python": "/nonexistent/envs/reid/bin/python"}, {"gpu_memory_gb": 1}],
})}
GOOD = [{"mode": "default", "repo": "r", "model": m, "hyperparameters": {}} for m in ("tiny", "tv", "data", "py")]
BAD = GOOD + [{"mode": "default", "repo": "nope", "model": "x"}, {"mode": "default", "model": "tiny"},
              {"mode": "default", "repo": "r", "model": "zzz"}, {"repository": "r", "model": "tiny"},
              {"mode": "default", "repo": "r", "model": "tiny", "hyperparameters": {"lr2": 1}, "timeout": 5}, 7]


def check_contract(report) -> set:
    """Assert the contract on every finding of `report`; the ids seen."""
    causes = set(cause_ids())
    for f in report.findings:
        d = findings.declaration(f.id)
        assert d is not None, f"{f.id} ({f.group}, {f.status}) is emitted but not declared in core/findings.py"
        assert d.group in (f.group, "*"), f"{f.id} is declared in group {d.group}, emitted in {f.group}"
        if f.status == FAIL and f.experiments:
            assert d.cause in causes or (d.cause is None and d.note), \
                f"{f.id} blocks {list(f.experiments)} but maps to no explain cause ({d.cause!r})"
    return {f.id for f in report.findings}


def _memo_dir(tmp_path):
    """A resolve memo shared by these tests, holding torchvision's answer for resnet18 (the file name
    the library gives; a warm doctor run reads it instead of importing torchvision)."""
    folder = tmp_path.parent / "contract-memo"
    memo = Resolver(str(folder / "resolve.json"))
    memo.put(f"torchvision/{library_version('torchvision')}/resnet18/IMAGENET1K_V1",
             {"url": "https://download.pytorch.org/models/resnet18-f37072fd.pth", "filename": "resnet18-f37072fd.pth"})
    memo.save()
    return folder


def run(tmp_path, env, settings=GOOD, launch=None, prepare=None, after=None):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {"HOME": str(home), "PATH": os.environ["PATH"], **env}
    ctx_root = tmp_path / "p"
    if prepare:
        prepare(ctx_root)
    ctx = make_ctx(ctx_root, MODELS, {"experiment_name": "t", "experiments": settings},
                   launch=launch or launch_for(env=env), memo_dir=_memo_dir(tmp_path),
                   timeout=0.5, groups=GROUPS)
    if after:
        after(ctx)
    return check_contract(run_doctor(ctx))


@pytest.fixture
def torch_host_refused(monkeypatch):
    with ns.RefusedPort() as refused:
        monkeypatch.setattr(netprobe, "TORCH_HUB_HOST", refused.url)
        yield refused.url


def _with_data(root):
    (root / "repos" / "r" / "data" / "train").mkdir(parents=True)
    (root / "repos" / "r" / "data" / "train" / "0001.jpg").write_bytes(b"x")


def test_healthy_cache(tmp_path, tiny_cache, hub_server, torch_host_refused):
    torch_home = tmp_path / "torch"
    caches.place_torchvision_checkpoint(torch_home, "resnet18", content=b"\0" * 64)
    seen = run(tmp_path, {"HF_HUB_CACHE": str(tiny_cache), "TORCH_HOME": str(torch_home), "HF_ENDPOINT": hub_server.url},
               prepare=_with_data)
    assert {"cache.hub.present", "cache.torchhub.present", "cache.path.present", "network.ok"} <= seen, seen


def test_empty_caches_hubs_refused(tmp_path, torch_host_refused):
    with ns.RefusedPort() as hub:
        seen = run(tmp_path, {"HF_ENDPOINT": hub.url})
    assert {"cache.hub.missing", "cache.torchhub.missing", "cache.path.missing", "network.refused"} <= seen


def test_broken_caches_hub_black_holed(tmp_path, tiny_cache, torch_host_refused):
    caches.truncate_blob(tiny_cache, TINY_REPO, "model.safetensors", size=3)
    caches.delete_blob(tiny_cache, TINY_REPO, "config.json")
    caches.leave_incomplete(tiny_cache, TINY_REPO, "model.safetensors")
    with ns.BlackHole() as hole:
        seen = run(tmp_path, {"HF_HUB_CACHE": str(tiny_cache), "HF_ENDPOINT": hole.url})
    assert "cache.hub.broken" in seen and "cache.leftovers" in seen
    assert seen & {"network.read-timeout", "network.connect-timeout", "network.tls-timeout"}


def test_offline_launch_with_an_empty_cache(tmp_path, torch_host_refused):
    seen = run(tmp_path, {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert {"env.offline.missing", "network.offline"} <= seen


def test_plain_sudo_launch(tmp_path, torch_host_refused):
    with ns.RefusedPort() as hub:
        env = {"HOME": str(tmp_path / "home"), "PATH": os.environ["PATH"], "HF_ENDPOINT": hub.url,
               "HF_HUB_CACHE": str(tmp_path / "home" / "hf")}
        launch = build_launch_context("sudo --preserve-env=HF_ENDPOINT", environ=env, ask_sudo=False)
        seen = run(tmp_path, env, launch=launch)
    assert "env.sudo.simulated" in seen and seen & {"env.home-moved", "env.dropped", "env.changed"}


def test_repo_folder_gone(tmp_path, torch_host_refused):
    import shutil

    seen = run(tmp_path, {"HF_HUB_OFFLINE": "1"}, after=lambda ctx: shutil.rmtree(ctx.registry.repos["r"].path))
    assert {"settings.repo.missing", "cache.path.missing"} <= seen


def test_settings_full_of_mistakes(tmp_path, torch_host_refused):
    with ns.RefusedPort() as hub:
        seen = run(tmp_path, {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "1"}, settings=BAD)
    assert {"settings.unknown-repo", "settings.missing-key", "settings.unknown-model", "settings.repository-key",
            "settings.unknown-hyperparameter", "settings.ignored-key", "settings.bad-entry"} <= seen


def test_the_contract_catches_an_undeclared_id_and_a_causeless_blocker():
    from core.model import Finding, LaunchContext, Report

    class Fake:
        def __init__(self, *fs):
            self.findings = fs

    with pytest.raises(AssertionError, match="not declared"):
        check_contract(Fake(Finding("cache.bogus", "cache", FAIL, "x", experiments=("e",))))
    with pytest.raises(AssertionError, match="no explain cause"):
        check_contract(Fake(Finding("env.kept", "env", FAIL, "x", experiments=("e",))))
    with pytest.raises(AssertionError, match="declared in group"):
        check_contract(Fake(Finding("network.ok", "cache", "ok", "x")))


def test_every_declared_cause_is_in_the_catalogue():
    known = set(cause_ids())
    assert [d.id for d in findings.DECLARED if d.cause is not None and d.cause not in known] == []
    assert [d.id for d in findings.DECLARED if d.status == FAIL and d.cause is None and not d.note] == []


@pytest.mark.parametrize("finding_id, cause", [
    ("system.gpu.stray-process", "cuda.oom.foreign-process"),
    ("cache.torchhub.missing", "torchhub.download"),
    ("network.tls-verify", "hub.tls"),
    ("system.mount.stale", "data.missing"),
    ("system.ownership.root-owned", "permission.denied"),
    ("cache.deep.load-failed", "hub.cache-miss"),
    ("env.sudo.refused", "permission.denied"),
    ("cache.hub.missing", "hub.cache-miss"),
    ("system.energy.perf-missing", "perf.unavailable"),
    ("system.disk.low", "disk.full"),
    ("system.disk.inodes", "disk.full"),
    ("settings.check.crashed", None),
])
def test_cause_for_names_the_right_cause(finding_id, cause):
    assert findings.cause_for(finding_id) == cause
