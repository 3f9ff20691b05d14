"""The Slurm backend's pieces that need no running job: options, the sbatch script and --dry-run,
the environment a job hands its child, accounting lines, and the doctor's cluster check."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from checks import cluster as cluster_check
from runner.backends import slurm, slurm_batch
from runner.nodejob import NodeTask, node_environment, setup_changes

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text,minutes", [("90", 90), ("0:30", 1), ("1:30", 2), ("2:00:00", 120), ("1-0", 1440),
                                          ("1-2:30", 1590), ("0-0:0:59", 1)])
def test_slurm_time_formats(text, minutes):
    assert slurm.time_minutes(text) == minutes


@pytest.mark.parametrize("bad", ["", "1h", "-5", "0", "1:2:3:4", "a-1"])
def test_bad_times_are_refused(bad):
    with pytest.raises(ValueError):
        slurm.time_minutes(bad)


def test_sbatch_lines():
    assert slurm.sbatch_option("--qos=high") == ("qos", "high")
    assert slurm.sbatch_option("#SBATCH --constraint a100") == ("constraint", "a100")
    assert slurm.sbatch_option("--exclusive") == ("exclusive", True)
    for bad in ("qos=high", "--a b c", "-q high"):
        with pytest.raises(ValueError):
            slurm.sbatch_option(bad)


def test_the_script_asks_for_the_resources_and_never_for_usr2(tmp_path):
    opts = slurm.SlurmOptions(partition="gpu", gpus_per_node=1, cpus_per_task=4, mem="16G", time="2:00:00",
                              array_parallelism=2, sbatch=("--qos=high",), setup=("module load cuda/12.1",))
    text = slurm.script(opts, str(tmp_path / "f"), 3)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --mem=16G", "#SBATCH --time=120", "#SBATCH --array=0-2%2", "#SBATCH --qos=high",
                 "#SBATCH --export=NONE", "#SBATCH --signal=URG@90", "module load cuda/12.1", "--export=ALL"):
        assert line in text, line
    assert "USR2" not in text  # Slurm signals every process of the step: USR2 would kill the training
    assert text.index(slurm.SETUP_BASE_VAR) < text.index("module load")  # the environment is saved first


def test_setup_changes_are_what_the_setup_lines_set():
    before = "PATH=/usr/bin\0HOME=/home/a\0KEEP=1\0"
    node = {"PATH": "/opt/cuda/bin:/usr/bin", "HOME": "/home/a", "KEEP": "1", "CUDA_HOME": "/opt/cuda",
            "SLURM_JOB_ID": "7", "SUBMITIT_EXECUTOR": "slurm",
            slurm.SETUP_BASE_VAR: base64.b64encode(before.encode()).decode()}
    assert setup_changes(node) == {"PATH": "/opt/cuda/bin:/usr/bin", "CUDA_HOME": "/opt/cuda"}
    assert setup_changes({"PATH": "/x"}) == {}  # no setup lines: nothing


def test_the_child_gets_the_submitters_environment_and_only_the_jobs_own_variables_from_the_node():
    task = NodeTask(run_dir="/r", experiment_id="e", env={"HOME": "/home/a", "HF_HUB_CACHE": "/c", "PATH": "/p"})
    node = {"HOME": "/var/empty", "PATH": "/node/bin", "LEAKED": "x", "SLURM_JOB_ID": "9",
            "CUDA_VISIBLE_DEVICES": "1", "SLURM_EXPORT_ENV": "NONE"}
    env, from_setup, from_node = node_environment(task, node)
    assert env == {"HOME": "/home/a", "HF_HUB_CACHE": "/c", "PATH": "/p", "SLURM_JOB_ID": "9",
                   "CUDA_VISIBLE_DEVICES": "1"}
    assert from_setup == () and from_node == ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")


def test_accounting_reads_the_signal_that_ended_the_step(monkeypatch):
    out = ("10_1|TIMEOUT|0:0|vm|00:01:15\n10_1.batch|CANCELLED|0:15|vm|00:01:15\n10_1.0|COMPLETED|0:0|vm|00:01:14\n"
           "10_2|CANCELLED by 0|0:0|vm|00:00:02\n10_2.batch|CANCELLED|0:15|vm|00:00:02\n10_2.0|CANCELLED|0:9|vm|00:00:06\n")
    monkeypatch.setattr(slurm.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, out, ""))
    acct = slurm.accounting(["10_1", "10_2"])
    assert acct["10_1"]["state"] == "TIMEOUT" and acct["10_1"]["step_signal"] is None
    assert acct["10_2"]["state"] == "CANCELLED" and acct["10_2"]["step_signal"] == 9
    assert slurm_batch.elapsed_seconds("1-00:01:15") == 86475


def test_jobs_found_by_name_expand_grouped_array_tasks(monkeypatch):
    """A submitter killed between sbatch and its journal: the jobs are found by name, pending
    array tasks included (sacct groups them as 83_[1-3,5%2])."""
    out = "83_0\n83_[1-3,5%2]\n"
    monkeypatch.setattr(slurm.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, out, ""))
    assert slurm.submitted_by_name("mutation-run.run_x", "now") == ["83_0", "83_1", "83_2", "83_3", "83_5"]


def test_progress_is_plain_lines_when_piped_and_one_line_in_place_on_a_terminal(tmp_path):
    class Tty(list):
        def write(self, s):
            self.append(s)

        def flush(self):
            pass

        def isatty(self):
            return True

    piped = tmp_path / "p.txt"
    with open(piped, "w") as f:
        p = slurm_batch.Progress(f)
        p.show({"pending": 2})
        p.show({"pending": 2})  # unchanged: not repeated
        p.show({"running": 1, "passed": 1})
    assert piped.read_text().splitlines() == ["slurm: 2 pending, 0 running, 0 passed",
                                              "slurm: 0 pending, 1 running, 1 passed"]
    tty = Tty()
    p = slurm_batch.Progress(tty)
    p.show({"pending": 1})
    p.show({"failed": 1})
    assert all(s.startswith("\r\x1b[2K") and "\n" not in s for s in tty)


def test_dry_run_shows_the_sbatch_script_without_a_cluster(tmp_path):
    p = subprocess.run([sys.executable, "-m", "runner.cli", "-ec", "settings/demo.json", "--only", "settings",
                        "--backend", "slurm", "--dry-run", "--partition", "gpu", "--time", "30", "--gpus-per-node", "1",
                        "--sbatch=--qos=high", "--setup", "module load cuda", "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode in (0, 1), p.stderr
    out = json.loads(p.stdout)
    assert out["slurm"]["partition"] == "gpu" and "#SBATCH --qos=high" in out["sbatch_script"]
    assert "#SBATCH --array=0-2%3" in out["sbatch_script"] and "module load cuda" in out["sbatch_script"]
    assert not any(Path(ROOT / "results").glob("run_*/slurm"))


def test_bad_slurm_options_are_one_line_usage_errors():
    p = subprocess.run([sys.executable, "-m", "runner.cli", "-ec", "settings/demo.json", "--only", "settings",
                        "--backend", "slurm", "--dry-run", "--time", "1h"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "--time '1h'" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def _ctx(root: str, ids=("a", "b")):
    return SimpleNamespace(plan=SimpleNamespace(experiments=[SimpleNamespace(id=i) for i in ids]),
                           options=SimpleNamespace(project_root=root, timeout=1.0))


def test_cluster_check_without_slurm_commands(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert cluster_check.check_cluster(_ctx(str(tmp_path))) is None  # the doctor says nothing
    (f,) = cluster_check.cluster_findings(_ctx(str(tmp_path)), required=True)
    assert f.id == "system.cluster.commands" and f.status == "fail" and f.experiments == ("a", "b")
    assert "sbatch" in f.title and f.fix


def test_folders_the_nodes_cannot_see(tmp_path):
    """Nodes other than this machine: /dev/shm (tmpfs) and /tmp are node-local, a local disk cannot be
    established either way (a warning, never an all-clear)."""
    local = "/usr"  # a local disk outside the node-local folders (the checkout itself may be under /tmp)
    if cluster_check.fs_type(local)[0] in cluster_check.NODE_LOCAL_FS:
        pytest.skip(f"{local} is on a node-local filesystem on this machine")
    places = [("results folder", "/dev/shm/results"), ("the project", str(tmp_path)), ("x", local)]
    found = {f.data["path"]: f for f in cluster_check._shared_findings(places, ["node01", "node02"], ("a",))}
    assert found["/dev/shm/results"].status == "fail" and found["/dev/shm/results"].experiments == ("a",)
    assert "--results-dir" in found["/dev/shm/results"].fix[0]
    assert found[str(tmp_path)].status == "fail"  # under /tmp
    assert found[local].status in ("warn", "ok")
    if found[local].status == "warn":
        assert "srun -N1 ls -d" in found[local].fix[0]
    (only,) = cluster_check._shared_findings(places, [os.uname().nodename.split(".")[0]], ("a",))
    assert only.status == "ok"  # the only node is this machine


@pytest.fixture
def cluster_up():
    from tests.support import slurm as slurm_support

    c = slurm_support.Cluster()
    if slurm_support.skip_reason(try_install=False) or c.node_state() not in ("idle", "mix", "alloc"):
        pytest.skip("no test cluster running (tests/test_slurm.py brings one up)")
    return c


def test_cluster_check_against_the_cluster(cluster_up, tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    ctx = _ctx(str(tmp_path))
    ok = cluster_check.cluster_findings(ctx, partition="debug", required=True)
    assert not [f for f in ok if f.status == "fail"]
    assert any(f.id == "system.cluster.shared-fs" and f.status == "ok" for f in ok)
    (bad,) = cluster_check.cluster_findings(ctx, partition="nope", required=True)
    assert bad.id == "system.cluster.partition" and bad.status == "fail" and "debug" in bad.detail
    assert bad.fix == ("mutation-run --backend slurm --partition debug ...",)
    (warned,) = [f for f in cluster_check.check_cluster(_ctx(str(tmp_path))) if f.id == "system.cluster.shared-fs"]
    assert warned.status == "ok"
    monkeypatch.setattr(cluster_check, "cluster_findings", lambda *a, **k: [bad])
    (soft,) = cluster_check.check_cluster(ctx)  # the doctor alone never blocks on the cluster
    assert soft.status == "warn" and soft.experiments == ()


def test_a_batch_sbatch_refuses_is_one_line_and_exit_2(cluster_up, tmp_path):
    from tests.test_slurm import argv, env_for, project

    root = project(tmp_path, "#!/bin/sh\necho ACC 1\n")
    p = subprocess.run(argv(root, "--mem", "999999G"), cwd=ROOT, env=env_for(tmp_path), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "mutation-run: error: sbatch refused the batch:" in p.stderr
    assert not list((root / "results").glob("run_*/r_m_001/experiment.json"))  # nothing ran, nothing recorded


def test_the_submitter_writes_records_and_its_folders_through_the_run_folder_without_following_links(tmp_path):
    # an experiment folder (or the slurm folder) replaced by a link to somewhere else is refused,
    # never written through, as the local runner's records are
    run_dir, outside = tmp_path / "run", tmp_path / "outside"
    run_dir.mkdir()
    outside.mkdir()
    (run_dir / "e1").symlink_to(outside)
    said = []
    batch = slurm_batch.SlurmBatch(ctx=None, jobs=[], preflights={}, run_dir=str(run_dir), options=None,
                                   slurm=SimpleNamespace(time=None), say=said.append, stop=None)
    batch._amend({"experiment_id": "e1", "status": "passed"}, {"state": "COMPLETED"})
    assert list(outside.iterdir()) == [] and said  # refused, and said so
    batch._amend({"experiment_id": "e2", "status": "passed"}, {"state": "COMPLETED"})
    assert json.loads((run_dir / "e2" / "experiment.json").read_text())["slurm"] == {"state": "COMPLETED"}
    batch.write_summary()
    assert (run_dir / "summary.csv").exists()
    (run_dir / "slurm").symlink_to(outside)
    with pytest.raises(OSError):
        batch._private_folder("slurm")
    (run_dir / "slurm").unlink()
    batch._private_folder("slurm")
    assert (run_dir / "slurm").stat().st_mode & 0o777 == 0o700
