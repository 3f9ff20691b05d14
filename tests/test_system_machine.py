"""Energy counters, CPU governor and disk space, checked against this machine for real.

Each test first asks the machine itself (runs `perf stat -e power/energy-pkg/ true`, reads
/sys/devices/system/cpu, calls statvfs) and then asserts the check says the same thing.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest

from checks.system import disk, energy, governor
from core.model import FAIL, OK, WARN
from tests.test_system_support import as_list, launch_for, make_ctx, one, repo, settings, throwaway_user  # noqa: F401

IS_ROOT = os.getuid() == 0


def models():
    return {"A": repo(["a1", "a2"], measure_energy=True), "B": repo(["b1"])}


def plan(**top):
    return settings(("A", "a1"), ("A", "a2"), ("B", "b1"), **top)


def real_perf_stat():
    perf = shutil.which("perf")
    if perf is None:
        return None
    p = subprocess.run([perf, "stat", "-e", "power/energy-pkg/", "true"], capture_output=True, text=True, timeout=10)
    return p.returncode, p.stderr


# --------------------------------------------------------------------------------------------- energy

def test_energy_finding_matches_what_perf_really_does_here(tmp_path):
    ctx = make_ctx(tmp_path / "p", {"B": repo(["b1"])}, settings(("B", "b1"), governor="performance"))
    findings = as_list(energy.check_energy(ctx))
    real = real_perf_stat()
    ids = (ctx.plan.experiments[0].id,)
    if real is None:
        f = one(findings, "system.energy.perf-missing")
        assert f.status == FAIL and f.experiments == ids
        return
    rc, err = real
    if rc == 0:
        f = one(findings, "system.energy.ok")
        assert f.status == OK and f.data["stat"] == "readable"
    else:
        fail = [f for f in findings if f.status == FAIL]
        assert [f.id for f in fail] in (["system.energy.rapl-missing"], ["system.energy.rapl-unreadable"])
        assert fail[0].experiments == ids  # "governor" in the settings: mutation.py measures energy
        assert fail[0].fix and all(line.strip() for line in fail[0].fix)
        if "Cannot find PMU" in err:
            assert fail[0].id == "system.energy.rapl-missing" and "Cannot find PMU" in fail[0].detail
        else:
            assert err.strip().splitlines()[0].strip() in fail[0].detail
    assert fail_or_ok_matches_paranoid(findings)


def fail_or_ok_matches_paranoid(findings):
    with open("/proc/sys/kernel/perf_event_paranoid") as f:
        paranoid = int(f.read())
    return all(f.data.get("perf_event_paranoid") == paranoid for f in findings if "perf_event_paranoid" in f.data)


def test_energy_is_information_when_the_plan_does_not_measure_it(tmp_path):
    ctx = make_ctx(tmp_path / "p", {"B": repo(["b1"])}, settings(("B", "b1")))
    assert energy.energy_request(ctx)[0] is False
    findings = as_list(energy.check_energy(ctx))
    assert findings and all(f.status == OK and not f.experiments for f in findings)
    off = make_ctx(tmp_path / "q", {"B": repo(["b1"])}, settings(("B", "b1"), governor="performance",
                                                                  measure_energy=False))
    assert energy.energy_request(off)[0] is False


def test_registry_flag_asks_only_for_its_repo(tmp_path):
    ctx = make_ctx(tmp_path / "p", models(), plan())
    asked, ids, why = energy.energy_request(ctx)
    assert asked and ids == tuple(e.id for e in ctx.plan.experiments if e.repo == "A") and "measure_energy" in why
    # a repo that says false is left out even when the settings' "governor" asks for the others
    no = make_ctx(tmp_path / "q", {"A": repo(["a1"], measure_energy=False), "B": repo(["b1"])},
                  settings(("A", "a1"), ("B", "b1"), governor="performance"))
    assert energy.energy_request(no)[1] == (no.plan.experiments[1].id,)
    demo = make_ctx(tmp_path / "r", {"A": repo(["a1"], measure_energy=False)},
                    settings(("A", "a1"), governor="performance"))
    asked, ids, why = energy.energy_request(demo)
    assert not asked and ids == () and "false" in why
    assert all(f.status == OK and not f.experiments for f in as_list(energy.check_energy(demo)))


def test_perf_and_bc_missing_from_the_launch_path(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    ctx = make_ctx(tmp_path / "p", models(), plan(), launch=launch_for(env=dict(os.environ, PATH=str(empty))))
    findings = as_list(energy.check_energy(ctx))
    a_ids = tuple(e.id for e in ctx.plan.experiments if e.repo == "A")
    for fid in ("system.energy.perf-missing", "system.energy.bc-missing"):
        f = one(findings, fid)
        assert f.status == FAIL and f.experiments == a_ids and f.fix[0].startswith("sudo ")


def test_perf_wrapper_without_perf_for_the_running_kernel(tmp_path):
    """Debian's /usr/bin/perf wrapper (linux-base) when linux-perf for the running kernel is not installed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "perf"
    wrapper.write_text("#!/bin/sh\nversion=\"$(/bin/uname -r | /bin/sed -E 's/^([0-9]+\\.[0-9]+).*/\\1/')\"\n"
                       "echo \"E: linux-perf-$version is not installed.\" >&2\nexit 1\n")
    wrapper.chmod(0o755)
    os.symlink(shutil.which("bc") or "/bin/true", bin_dir / "bc")
    ctx = make_ctx(tmp_path / "p", models(), plan(), launch=launch_for(env=dict(os.environ, PATH=str(bin_dir))))
    f = one(as_list(energy.check_energy(ctx)), "system.energy.perf-kernel")
    release = os.uname().release
    assert f.status == FAIL and f"linux-perf-{'.'.join(release.split('.')[:2])} is not installed" in f.detail


@pytest.mark.skipif(not IS_ROOT, reason="running perf as another user needs root")
def test_perf_is_run_as_the_launch_user(tmp_path, throwaway_user):
    ctx = make_ctx(tmp_path / "p", models(), plan(), launch=launch_for(user=throwaway_user))
    findings = as_list(energy.check_energy(ctx))
    stat = next(f for f in findings if f.id in ("system.energy.ok", "system.energy.rapl-missing",
                                                "system.energy.rapl-unreadable"))
    assert f"as {throwaway_user}" in stat.detail or f"as {throwaway_user}" in stat.title
    as_user = subprocess.run(["perf", "stat", "-e", "power/energy-pkg/", "true"], capture_output=True, text=True,
                             user=throwaway_user, timeout=10)
    assert (stat.data["stat"] == "readable") == (as_user.returncode == 0)


# --------------------------------------------------------------------------------------------- governor

def test_governor_matches_this_machine(tmp_path):
    ctx = make_ctx(tmp_path / "p", models(), plan(governor="performance"))
    f = governor.check_governor(ctx)
    freq = glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq")
    if not freq:
        assert f.id == "system.governor.unavailable" and f.status == WARN
        assert len(f.experiments) == 3 and "no cpufreq" in f.title
        return
    with open(os.path.join(freq[0], "scaling_available_governors")) as fh:
        available = fh.read().split()
    if "performance" not in available:
        assert f.id == "system.governor.not-available"
    else:
        assert f.id in ("system.governor.ok", "system.governor.not-settable")
        assert (f.id == "system.governor.ok") == os.access(os.path.join(freq[0], "scaling_governor"), os.W_OK)


def test_no_governor_requested_means_nothing_to_say(tmp_path):
    assert governor.check_governor(make_ctx(tmp_path / "p", models(), plan())) is None


def fake_cpufreq(base, n=2, available="performance powersave", current="powersave", mode=0o644):
    """A copy of the sysfs cpufreq layout (for the branches this VM cannot show)."""
    for i in range(n):
        d = base / f"cpu{i}" / "cpufreq"
        d.mkdir(parents=True)
        (d / "scaling_available_governors").write_text(available + "\n")
        (d / "scaling_governor").write_text(current + "\n")
        (d / "scaling_governor").chmod(mode)
    return base


def test_governor_branches_on_a_cpufreq_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(governor, "CPU_SYSFS", str(fake_cpufreq(tmp_path / "cpu")))
    ctx = make_ctx(tmp_path / "p", models(), plan(governor="performance"))
    f = governor.check_governor(ctx)
    assert f.id == "system.governor.ok" and f.data["current"] == ["powersave"] and f.data["cpus"] == 2
    ctx = make_ctx(tmp_path / "q", models(), plan(governor="schedutil"))
    f = governor.check_governor(ctx)
    assert f.id == "system.governor.not-available"
    assert f.fix[0] == "sudo modprobe cpufreq_schedutil  # if it is a module"


@pytest.mark.skipif(not IS_ROOT, reason="needs a root-owned sysfs-like file and another user")
def test_governor_not_settable_by_a_plain_launch_user(tmp_path, monkeypatch, throwaway_user):
    base = fake_cpufreq(tmp_path / "cpu")
    os.chmod(tmp_path, 0o755)
    monkeypatch.setattr(governor, "CPU_SYSFS", str(base))
    ctx = make_ctx(tmp_path / "p", models(), plan(governor="performance"), launch=launch_for(user=throwaway_user))
    f = governor.check_governor(ctx)
    assert f.id == "system.governor.not-settable" and f.status == WARN
    assert f.fix[0].startswith(("sudo cpupower frequency-set -g performance", "echo performance | sudo tee"))
    # what the check says, the user experiences: writing the file is refused
    p = subprocess.run(["/bin/sh", "-c", f"echo performance > {base}/cpu0/cpufreq/scaling_governor"],
                       user=throwaway_user, capture_output=True, text=True)
    assert p.returncode != 0 and "Permission denied" in p.stderr


# --------------------------------------------------------------------------------------------- disk

def test_disk_reports_this_filesystem(tmp_path):
    ctx = make_ctx(tmp_path / "p", models(), plan())
    findings = as_list(disk.check_disk(ctx))
    v = os.statvfs(tmp_path)
    free = v.f_bfree * v.f_frsize  # we launch as root: reserved blocks count
    ok = [f for f in findings if f.id == "system.disk.ok"]
    if not ok:
        pytest.skip(f"this machine is short of disk: {[f.title for f in findings]}")
    f = next(f for f in ok if os.path.join(str(tmp_path / "p"), "results") in f.data["paths"])
    assert abs(f.data["free_bytes"] - free) < 256 * 1024 * 1024
    assert f.data["need_bytes"] == disk.DISK_MARGIN + 3 * disk.RESULTS_PER_EXPERIMENT  # no weights to fetch


@pytest.fixture
def small_fs(tmp_path):
    """A real 64 MiB tmpfs with 2000 inodes, unmounted afterwards."""
    if not IS_ROOT:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,nr_inodes=2000", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_low_and_few_inodes_on_a_real_small_filesystem(small_fs, tmp_path):
    root = small_fs / "project"
    ctx = make_ctx(root, {"B": repo(["b1"]), "C": repo(["weights"], {"weights": [
        {"hf": "timm/hrnet_w18.ms_aug_in1k", "files": ["model.safetensors"]}]})},
        settings(("B", "b1"), ("C", "weights")),
        launch=launch_for(env=dict(os.environ, HOME=str(small_fs / "home"), TORCH_HOME=str(small_fs / "torch"))),
        memo_dir=tmp_path / "memo")
    findings = as_list(disk.check_disk(ctx))
    low = [f for f in findings if f.id == "system.disk.low"]
    assert len(low) == 1 and low[0].status == FAIL and len(low[0].experiments) == 2
    assert "timm/hrnet_w18.ms_aug_in1k" in low[0].detail  # the missing weights count, at their size
    assert low[0].data["need_bytes"] == (disk.DISK_MARGIN + 2 * disk.RESULTS_PER_EXPERIMENT
                                         + disk.KNOWN_WEIGHTS["timm/hrnet_w18.ms_aug_in1k"])
    assert low[0].fix[0] == f"df -h {small_fs}"
    inodes = one(findings, "system.disk.inodes")
    assert inodes.status == FAIL and inodes.data["free_inodes"] <= 2000
