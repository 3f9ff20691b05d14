"""Repo interpreters, probed for real: the project's venv python (torch, torchvision, timm),
/usr/bin/python3 (no torch), a path that does not exist, a script that hangs and one that fails.

The GPU for the architecture checks is the `nvidia-smi` stand-in (tests/support/fake_nvidia_smi.py),
which represents a GPU machine; the torch arch list compared with it is the real one of the venv.
"""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import time

import pytest

from checks.system import interpreters
from core.model import FAIL, OK, WARN
from tests.support import fake_nvidia_smi
from tests.test_system_support import VENV_PYTHON, as_list, launch_for, make_ctx, one, repo, settings

SYSTEM_PYTHON = "/usr/bin/python3"


def registry(tmp_path, extra=None):
    models = {
        "vision": repo(["hrnet"], {"*": [{"python": VENV_PYTHON}], "hrnet": [{"timm": "hrnet_w18"}]}),
        "plain": repo(["mlp"], {"*": [{"python": SYSTEM_PYTHON}]}),
        "gone": repo(["m"], {"*": [{"python": str(tmp_path / "miniconda3" / "envs" / "oast" / "bin" / "python")}]}),
    }
    models.update(extra or {})
    return models


def plan(*more):
    return settings(("vision", "hrnet"), ("plain", "mlp"), ("gone", "m"), *more)


@pytest.fixture(scope="module")
def venv_arch():
    """The real arch list of the venv's torch (read in a subprocess, as the check does)."""
    out = subprocess.run([VENV_PYTHON, "-c", "import torch; print(torch._C._cuda_getArchFlags() or '')"],
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    assert out, "the venv's torch is a CUDA build"
    return out


@pytest.mark.skipif(not os.access(SYSTEM_PYTHON, os.X_OK), reason=f"{SYSTEM_PYTHON} not installed")
def test_real_interpreters_without_a_gpu(tmp_path):
    env = dict(os.environ, PATH="/usr/bin:/bin")  # no nvidia-smi: this machine as it is
    ctx = make_ctx(tmp_path / "p", registry(tmp_path), plan(), launch=launch_for(env=env))
    ids = {e.repo: e.id for e in ctx.plan.experiments}
    t0 = time.monotonic()
    findings = as_list(interpreters.check_interpreters(ctx))
    elapsed = time.monotonic() - t0
    ok = one(findings, "system.interpreter.ok")
    assert ok.experiments == (ids["vision"],) and ok.status == OK
    for name in ("torch", "torchvision", "timm"):  # torch.__version__ carries the local tag: 2.14.1+cu130
        assert ok.data["modules"][name]["version"].split("+")[0] == importlib.metadata.version(name)
    assert "no GPU here" in ok.detail and f"torch {importlib.metadata.version('torch')}" in ok.title
    no_torch = one(findings, "system.interpreter.no-torch")
    assert no_torch.status == FAIL and no_torch.experiments == (ids["plain"],)
    assert "ModuleNotFoundError: No module named 'torch'" in no_torch.detail
    assert no_torch.fix[0].startswith(f"{SYSTEM_PYTHON} -m pip install --upgrade torch")
    missing = one(findings, "system.interpreter.missing")
    assert missing.status == FAIL and missing.experiments == (ids["gone"],)
    assert missing.fix[0] == "conda create -y -n oast python=3.10"
    # with the cache group selected too, the missing interpreter is reported there, once
    both = make_ctx(tmp_path / "p", registry(tmp_path), plan(), launch=launch_for(env=env), groups=("cache", "system"))
    assert not [f for f in as_list(interpreters.check_interpreters(both)) if f.id == "system.interpreter.missing"]
    assert elapsed < 60


def test_architecture_and_driver_against_the_gpu(tmp_path, venv_arch):
    """GPU 0 is an RTX 3080 (8.6), GPU 1 a Tesla K80 (3.7, dropped by current torch builds); the
    driver supports CUDA 12.2 while the venv's torch is built for a newer CUDA."""
    bin_dir = tmp_path / "gpu-bin"
    fake_nvidia_smi.install(bin_dir, {
        "driver": "535.104.05", "cuda": "12.2", "processes": [],
        "gpus": [{"uuid": "GPU-0", "name": "NVIDIA GeForce RTX 3080", "memory_total": 10240, "memory_used": 0,
                  "compute_cap": "8.6"},
                 {"uuid": "GPU-1", "name": "Tesla K80", "memory_total": 11441, "memory_used": 0,
                  "compute_cap": "3.7"}]})
    env = dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    ctx = make_ctx(tmp_path / "p", {"vision": registry(tmp_path)["vision"]}, settings(("vision", "hrnet")),
                   launch=launch_for(env=env))
    findings = as_list(interpreters.check_interpreters(ctx))
    assert interpreters.arch_supported(venv_arch, "8.6") and not interpreters.arch_supported(venv_arch, "3.7")
    arch = one(findings, "system.interpreter.arch")
    assert arch.status == FAIL and "GPU 1 Tesla K80 (sm_37)" in arch.title
    assert arch.data["modules"]["torch"]["arch"] == venv_arch
    torch_cuda = arch.data["modules"]["torch"]["cuda"]
    if int(torch_cuda.split(".")[0]) > 12:
        driver = one(findings, "system.interpreter.driver")
        assert driver.status == FAIL and "supports CUDA 12.2" in driver.title
        assert "--extra-index-url https://download.pytorch.org/whl/cu121" in driver.fix[0]
    assert arch.data["modules"]["torch"]["cuda_available"] is False  # really asked, and no GPU here


@pytest.mark.parametrize("arch, cap, ok", [
    (["sm_75", "sm_80", "sm_86", "sm_90"], "8.6", True),
    (["sm_75", "sm_80", "sm_86", "sm_90"], "8.9", True),     # sm_86 cubins run on 8.9
    (["sm_37", "sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86"], "9.0", False),  # torch 1.8 cu111 on an H100
    (["sm_50", "sm_60", "sm_70", "compute_70"], "8.0", True),  # PTX is compiled for newer devices
    (["sm_90a"], "9.0", True), (["sm_90a"], "10.0", False),
    (["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"], "12.0", True),
    (["sm_75", "sm_80", "sm_86", "sm_90"], "12.0", False),   # an RTX 50xx with a cu12.4 build
    (["sm_75", "sm_80"], "7.0", False),
])
def test_arch_supported(arch, cap, ok):
    assert interpreters.arch_supported(arch, cap) is ok


def test_an_interpreter_that_hangs_or_fails(tmp_path, monkeypatch):
    hang, broken = tmp_path / "hang" / "python", tmp_path / "broken" / "python"
    for p, body in ((hang, "exec sleep 30\n"),
                    (broken, "echo 'error while loading shared libraries: libpython3.8.so.1.0: cannot open shared "
                             "object file: No such file or directory' >&2\nexit 127\n")):
        p.parent.mkdir()
        p.write_text("#!/bin/sh\n" + body)
        p.chmod(0o755)
    monkeypatch.setattr(interpreters, "PROBE_TIMEOUT", 1.0)
    models = {"h": repo(["m"], {"*": [{"python": str(hang)}]}), "b": repo(["m"], {"*": [{"python": str(broken)}]})}
    ctx = make_ctx(tmp_path / "p", models, settings(("h", "m"), ("b", "m")),
                   launch=launch_for(env=dict(os.environ, PATH="/usr/bin:/bin")))
    t0 = time.monotonic()
    findings = as_list(interpreters.check_interpreters(ctx))
    assert time.monotonic() - t0 < 5  # concurrently, each bounded
    timeout = one(findings, "system.interpreter.timeout")
    assert timeout.status == WARN and timeout.data["python"] == str(hang)
    bad = one(findings, "system.interpreter.broken")
    assert bad.status == FAIL and "libpython3.8.so.1.0" in bad.detail


def test_no_python_needs_means_no_probe(tmp_path):
    ctx = make_ctx(tmp_path / "p", {"r": repo(["m"])}, settings(("r", "m")))
    assert interpreters.check_interpreters(ctx) is None


def test_probe_answers_are_kept_until_the_environment_changes(tmp_path):
    """A second doctor run does not start the interpreter again; installing a package does."""
    env_dir = tmp_path / "envs" / "bug"
    site = env_dir / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    log = tmp_path / "started"
    python = env_dir / "bin" / "python"
    python.parent.mkdir()
    python.write_text(f"#!/bin/sh\necho started >> {log}\nexec {SYSTEM_PYTHON} \"$@\"\n")
    python.chmod(0o755)
    models = {"r": repo(["m"], {"*": [{"python": str(python)}]})}
    env = dict(os.environ, PATH="/usr/bin:/bin")

    def run():
        ctx = make_ctx(tmp_path / "p", models, settings(("r", "m")), launch=launch_for(env=env),
                       memo_dir=tmp_path / "memo")
        return one(as_list(interpreters.check_interpreters(ctx)), "system.interpreter.no-torch")

    first = run()
    assert log.read_text().count("started") == 1
    assert run() == first and log.read_text().count("started") == 1
    (site / "scipy-1.11.4.dist-info").mkdir()  # `pip install` adds folders to site-packages
    assert run().id == "system.interpreter.no-torch" and log.read_text().count("started") == 2
