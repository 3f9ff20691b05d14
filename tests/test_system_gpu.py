"""GPU checks and `core.gpu`, against a stand-in `nvidia-smi`.

This machine has no GPU. `tests/support/fake_nvidia_smi.py`, installed as an executable named
`nvidia-smi` first on the PATH of the environment under test, represents a GPU machine: it answers
the exact queries `core.gpu` makes in nvidia-smi's documented CSV format. The processes it lists
are real processes started here (one of them a real orphan reparented to init by a double fork),
so everything psutil reports about them (user, command line, parent) is real.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

import psutil
import pytest

from core import gpu as gpulib
from checks.system import gpu
from doctor.engine import verdicts
from core.model import FAIL, OK, WARN
from tests.support import fake_nvidia_smi
from tests.test_system_support import (ROOT, as_list, by_id, gone, kill, launch_for, make_ctx, one, orphan, repo,
                                       settings)

SLEEPER = (sys.executable, "-c", "import time; time.sleep(300)")  # a stand-in for `python train.py`
UUID0, UUID1 = "GPU-5e1b9f3a-0000-4c1e-9b7e-000000000000", "GPU-5e1b9f3a-1111-4c1e-9b7e-111111111111"


def gpu_state(processes=(), used=6000, **extra) -> dict:
    return {"driver": "535.104.05", "cuda": "12.2",
            "gpus": [{"uuid": UUID0, "name": "NVIDIA GeForce RTX 3080", "memory_total": 10240, "memory_used": used,
                      "compute_cap": "8.6"}],
            "processes": list(processes), **extra}


@pytest.fixture
def smi(tmp_path):
    """The stand-in's folder; `env` puts it first on PATH."""
    bin_dir = tmp_path / "gpu-bin"
    fake_nvidia_smi.install(bin_dir, gpu_state())
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return bin_dir, env


@pytest.fixture
def procs(tmp_path):
    """Real processes: an orphan of an earlier batch running from the project's repo, an orphan
    from elsewhere, and a live process whose parent (a shell) is alive: not an orphan."""
    project = tmp_path / "project"
    script = project / "repos" / "Person_reID" / "train.py"
    script.parent.mkdir(parents=True)
    script.write_text("")
    started = {
        "stray": orphan(*SLEEPER, str(script)),
        "elsewhere": orphan(*SLEEPER),
    }
    started["shell"] = orphan("/bin/sh", "-c", "/bin/sleep 302 & wait")
    for _ in range(500):
        kids = started["shell"].children()
        if kids:
            break
        time.sleep(0.01)
    started["child"] = kids[0]
    yield project, started
    for p in started.values():
        kill(p)


def listed(p, memory, gpu=UUID0):
    return {"pid": p.pid, "gpu_uuid": gpu, "used_memory": memory, "process_name": "/bin/sleep"}


def test_query_gpus_reads_the_csv_and_psutil_facts(smi, procs):
    bin_dir, env = smi
    project, started = procs
    stray, elsewhere, child = started["stray"], started["elsewhere"], started["child"]
    fake_nvidia_smi.write_state(bin_dir, gpu_state([listed(stray, 5632), listed(elsewhere, 200), listed(child, 100),
                                                    {"pid": 4_000_000, "gpu_uuid": UUID0, "used_memory": None,
                                                     "process_name": "python3"}]))
    snap = gpulib.query_gpus(env, project_paths=[str(project / "repos" / "Person_reID"), str(project / "results")])
    assert snap.driver == "535.104.05" and snap.cuda == "12.2"
    assert snap.gpus == (gpulib.Gpu(0, "NVIDIA GeForce RTX 3080", 10240, 4240, 6000, "8.6", "535.104.05"),)
    by_pid = {p.pid: p for p in snap.processes}
    s, e, c = by_pid[stray.pid], by_pid[elsewhere.pid], by_pid[child.pid]
    # the orphans really were reparented; psutil's view is what the snapshot says
    assert stray.ppid() == 1 and s.ppid == 1 and e.ppid == 1
    assert s.user == stray.username() == c.user
    assert s.cmdline == shlex.join(stray.cmdline()) and str(project) in s.cmdline
    assert s.orphan and "init" in s.reason and "points into" in s.reason and gpulib.in_project(s)
    assert e.orphan and not gpulib.in_project(e)
    assert not c.orphan and c.ppid == started["shell"].pid and c.reason == ""
    ghost = by_pid[4_000_000]
    assert (ghost.user, ghost.ppid, ghost.orphan, ghost.memory_mib, ghost.cmdline) == ("", None, False, 0, "python3")
    # the exact documented queries were asked
    asked = fake_nvidia_smi.calls(bin_dir)
    assert ["--query-gpu=" + ",".join(gpulib.GPU_FIELDS), "--format=csv,noheader,nounits"] in asked
    assert ["--query-compute-apps=pid,gpu_uuid,used_memory,process_name", "--format=csv,noheader,nounits"] in asked


def test_foreign_processes_leaves_out_own_pids_and_their_children(smi, tmp_path):
    bin_dir, env = smi
    parent = subprocess.Popen(["/bin/sh", "-c", "/bin/sleep 303 & wait"])
    try:
        for _ in range(200):
            kids = psutil.Process(parent.pid).children()
            if kids:
                break
            time.sleep(0.01)
        grandchild = kids[0]
        other = subprocess.Popen(["/bin/sleep", "304"])
        fake_nvidia_smi.write_state(bin_dir, gpu_state([listed(grandchild, 3000), listed(other, 100)]))
        snap = gpulib.query_gpus(env)
        assert [p.pid for p in gpulib.foreign_processes(snap, {parent.pid})] == [other.pid]
        assert {p.pid for p in gpulib.foreign_processes(snap, ())} == {grandchild.pid, other.pid}
        assert gpulib.foreign_processes(None, ()) == []
    finally:
        for p in psutil.Process(parent.pid).children(recursive=True):
            p.kill()
        parent.kill()
        parent.wait()
        other.kill()
        other.wait()


def test_no_nvidia_smi_on_the_path_is_none(tmp_path):
    assert gpulib.query_gpus({"PATH": str(tmp_path)}) is None


def test_old_driver_without_compute_cap(smi):
    bin_dir, env = smi
    fake_nvidia_smi.write_state(bin_dir, gpu_state(unsupported_fields=["compute_cap"]))
    snap = gpulib.query_gpus(env)
    assert snap.gpus[0].compute_capability is None and snap.gpus[0].memory_free_mib == 4240
    gpu_queries = [c[0] for c in fake_nvidia_smi.calls(bin_dir) if c and c[0].startswith("--query-gpu")]
    assert gpu_queries[-1] == "--query-gpu=index,uuid,name,memory.total,memory.free,memory.used,driver_version"


def test_a_hung_nvidia_smi_is_killed_and_reported(smi):
    bin_dir, env = smi
    fake_nvidia_smi.write_state(bin_dir, gpu_state(hang=True))
    t0 = time.monotonic()
    with pytest.raises(gpulib.GpuQueryError, match="did not answer within 1 s"):
        gpulib.query_gpus(env, timeout=1.0)
    assert time.monotonic() - t0 < 5
    time.sleep(0.1)
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(bin_dir) in " ".join(p.info["cmdline"] or ())]


def gpu_registry():
    return {"A": repo(["big", "any"], {"big": [{"gpu_memory_gb": 6}], "any": [{"gpu": True}]}),
            "B": repo(["cpu"])}


def gpu_settings():
    return settings(("A", "big"), ("A", "any"), ("B", "cpu"),
                    {"mode": "parallel", "foreground": {"repo": "A", "model": "any", "hyperparameters": {}},
                     "background": {"repo": "A", "model": "big", "hyperparameters": {}}})


def test_stray_process_of_an_earlier_batch_and_short_memory_block_only_gpu_experiments(smi, tmp_path):
    bin_dir, env = smi
    ctx = make_ctx(tmp_path / "p", gpu_registry(), gpu_settings(), launch=launch_for(env=env))
    train = os.path.join(ctx.registry.repos["A"].path, "train.py")
    stray = orphan(*SLEEPER, train)
    try:
        fake_nvidia_smi.write_state(bin_dir, gpu_state([listed(stray, 5632)]))
        findings = as_list(gpu.check_gpu(ctx))
        ids = [e.id for e in ctx.plan.experiments]
        big, anyg, cpu, par = ids
        present = one(findings, "system.gpu.present")
        assert present.status == OK and "CUDA 12.2" in present.title and "4240 of 10240 MiB free" in present.detail
        s = one(findings, "system.gpu.stray-process")
        assert s.status == FAIL and set(s.experiments) == {big, anyg, par}
        assert s.data["pid"] == stray.pid and s.data["orphan"] and str(stray.pid) in s.detail
        kill_line = next(line for line in s.fix if "kill " in line)
        assert kill_line == f"kill {stray.pid}  # root, 5632 MiB on GPU 0: {shlex.join([*SLEEPER, train])}"
        m = one(findings, "system.gpu.memory")
        # 6 GiB > 4240 MiB free; the parallel experiment needs 6 GiB too (6 + a GPU of any size)
        assert m.status == FAIL and set(m.experiments) == {big, par}
        assert m.data["holders"] == [stray.pid] and f"pid {stray.pid}" in m.detail
        v = {x.experiment.id: x.verdict for x in verdicts(ctx.plan.experiments, findings)}
        assert v == {big: "blocked", anyg: "blocked", cpu: "pass", par: "blocked"}
        # the fix is copy-pasteable: run it, the process is gone
        subprocess.run(shlex.split(kill_line.split("#")[0]), check=True)
        assert gone(stray)
    finally:
        kill(stray)


def test_orphan_outside_the_project_warns_and_live_processes_are_information(smi, procs, tmp_path):
    bin_dir, env = smi
    _, started = procs
    ctx = make_ctx(tmp_path / "p", gpu_registry(), gpu_settings(), launch=launch_for(env=env))
    fake_nvidia_smi.write_state(bin_dir, gpu_state([listed(started["elsewhere"], 300), listed(started["child"], 100)],
                                                   used=400))
    findings = as_list(gpu.check_gpu(ctx))
    stray = one(findings, "system.gpu.stray-process")
    assert stray.status == WARN and stray.experiments == () and f"kill {started['elsewhere'].pid}" in stray.fix[1]
    assert one(findings, "system.gpu.process").status == OK
    assert not by_id(findings, "system.gpu.memory")


def test_no_gpu_blocks_only_the_experiments_that_need_one(tmp_path):
    env = dict(os.environ, PATH="/usr/bin:/bin")
    assert gpulib.find_nvidia_smi(env) is None
    ctx = make_ctx(tmp_path / "p", gpu_registry(), gpu_settings(), launch=launch_for(env=env))
    f = one(as_list(gpu.check_gpu(ctx)), "system.gpu.none")
    assert f.status == FAIL and len(f.experiments) == 3 and f.fix
    v = {x.experiment.id: x.verdict for x in verdicts(ctx.plan.experiments, [f])}
    assert v[ctx.plan.experiments[2].id] == "pass"
    plain = make_ctx(tmp_path / "q", {"B": repo(["cpu"])}, settings(("B", "cpu")), launch=launch_for(env=env))
    f = one(as_list(gpu.check_gpu(plain)), "system.gpu.none")
    assert f.status == OK and f.experiments == ()


def test_cuda_visible_devices_that_hides_every_gpu(smi, tmp_path):
    _, env = smi
    launch = launch_for(env=dict(env, CUDA_VISIBLE_DEVICES=""))
    ctx = make_ctx(tmp_path / "p", gpu_registry(), gpu_settings(), launch=launch)
    f = one(as_list(gpu.check_gpu(ctx)), "system.gpu.none")
    assert f.status == FAIL and "CUDA_VISIBLE_DEVICES" in f.detail and f.fix[0].startswith("unset CUDA_VISIBLE_DEVICES")


def test_nvidia_smi_that_fails(smi, tmp_path):
    bin_dir, env = smi
    fake_nvidia_smi.write_state(bin_dir, gpu_state(
        fail="Failed to initialize NVML: Driver/library version mismatch"))
    ctx = make_ctx(tmp_path / "p", gpu_registry(), gpu_settings(), launch=launch_for(env=env))
    f = one(as_list(gpu.check_gpu(ctx)), "system.gpu.smi-failed")
    assert f.status == FAIL and "Driver/library version mismatch" in f.detail and len(f.experiments) == 3


def test_the_doctor_cli_reports_the_stray_process(smi, tmp_path):
    """The whole CLI, its launch context built from the environment: the stand-in is found on PATH."""
    bin_dir, env = smi
    make_ctx(tmp_path / "p", gpu_registry(), gpu_settings())
    train = str(tmp_path / "p" / "repos" / "big_any" / "train.py")
    stray = orphan(*SLEEPER, train)
    try:
        fake_nvidia_smi.write_state(bin_dir, gpu_state([listed(stray, 5632)]))
        p = subprocess.run([sys.executable, "-m", "doctor.cli", "-ec", str(tmp_path / "p" / "settings.json"),
                            "--models-config", str(tmp_path / "p" / "models_config.json"), "--project-root",
                            str(tmp_path / "p"), "--only", "system", "--json"],
                           env=dict(env, HOME=str(tmp_path)), capture_output=True, text=True, cwd=ROOT, timeout=60)
        data = json.loads(p.stdout)
        assert p.returncode == 1
        found = [f for f in data["findings"] if f["id"] == "system.gpu.stray-process"]
        assert found and found[0]["status"] == "fail" and str(stray.pid) in json.dumps(found[0])
    finally:
        kill(stray)


def test_nvidia_smi_off_the_launch_path_is_still_found(smi, tmp_path, monkeypatch):
    """sudo's secure_path may lack the driver's folder: CUDA still works, the GPU is still there."""
    bin_dir, _ = smi
    monkeypatch.setattr(gpu, "SMI_FALLBACK_DIRS", (str(bin_dir),))
    launch = launch_for(env=dict(os.environ, PATH="/usr/bin:/bin"))
    ctx = make_ctx(tmp_path / "p", gpu_registry(), gpu_settings(), launch=launch)
    findings = as_list(gpu.check_gpu(ctx))
    assert one(findings, "system.gpu.present").status == OK
    off = one(findings, "system.gpu.smi-not-on-path")
    assert off.status == WARN and off.fix == (f"sudo ln -s {bin_dir}/nvidia-smi /usr/local/bin/nvidia-smi",)
