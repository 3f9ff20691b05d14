"""mutation-run --backend slurm on a real one-node Slurm cluster (tests/support/slurm.py brings it up):
jobs through submitit, the doctor on the node, time limits, signals, kill -9 of the submitter, Ctrl-C."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import slurm as slurm_support
from tests.support.caches import clean_environ
from tests.test_runner_run import wait_for

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
HP = {"epochs": {"flag": "--epochs", "type": "int", "default": 1, "range": [1, 9], "distribution": "uniform"}}


@pytest.fixture(scope="session")
def cluster():
    """The test cluster, up for the session; the daemons this session started are stopped at its end
    (by the last of several sessions using it at once)."""
    reason = slurm_support.skip_reason()
    if reason:
        pytest.skip(reason)
    c = slurm_support.Cluster()
    c.attach()
    try:
        c.up()
    except RuntimeError as e:
        c.detach()
        pytest.skip(str(e))
    old = {k: os.environ.get(k) for k in c.env()}
    os.environ.update(c.env())
    yield c
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    c.detach()  # stops what this session started, unless another session still uses the cluster


def project(tmp_path: Path, script: str, epochs=(1,), requires=None) -> Path:
    """repos/r/train.sh (called `./train.sh -n m --epochs N`), models_config.json, settings.json."""
    root = tmp_path / "proj"
    repo = root / "repos" / "r"
    repo.mkdir(parents=True)
    (repo / "train.sh").write_text(script)
    (repo / "train.sh").chmod(0o755)
    reg = {"models": {"r": {"path": "repos/r", "train_script": "./train.sh", "models": ["m"], "model_flag": "-n",
                            "supported_hyperparams": HP,
                            "performance_metrics": {"log_patterns": {"acc": r"ACC ([0-9.]+)"}},
                            "requires": requires or {}}}}
    (root / "models_config.json").write_text(json.dumps(reg))
    exps = [{"mode": "default", "repo": "r", "model": "m", "hyperparameters": {"epochs": e}} for e in epochs]
    (root / "settings.json").write_text(json.dumps({"experiment_name": "t", "max_retries": 0, "experiments": exps}))
    return root


def argv(root: Path, *args) -> list:
    return [PY, "-m", "runner.cli", "--project-root", str(root), "--models-config", str(root / "models_config.json"),
            "-ec", str(root / "settings.json"), "--results-dir", str(root / "results"), "--only", "settings,cache",
            "--probe-timeout", "1", "--retry-delay", "0", "--grace", "1", "--backend", "slurm", "--require-preflight",
            *args]


def env_for(tmp_path: Path, **extra) -> dict:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return dict(clean_environ(home), **extra)


def run_dir(root: Path) -> Path:
    (d,) = sorted((root / "results").glob("run_*"))
    return d


def record(root: Path, eid: str) -> dict:
    return json.loads((run_dir(root) / eid / "experiment.json").read_text())


def journal(root: Path) -> list:
    """Every event, over the segments a --resume may add (journal.2.jsonl, ...)."""
    def segment(p: Path) -> int:
        n = p.name.split(".")[1]
        return int(n) if n.isdigit() else 1

    files = sorted(run_dir(root).glob("journal*.jsonl"), key=segment)
    return [json.loads(x) for f in files for x in f.read_text().splitlines() if x.strip()]


def batch_jobs(root: Path) -> list:
    p = subprocess.run(["squeue", "-h", "-r", "-n", f"mutation-run.{run_dir(root).name}", "-o", "%i"],
                       capture_output=True, text=True, timeout=30)
    return p.stdout.split()


def attempt_started(root: Path, eid: str) -> bool:
    """The node job started the experiment's process (its journal says so)."""
    path = run_dir(root) / eid / "node-journal.jsonl"
    return path.exists() and '"attempt-start"' in path.read_text()


def node_job_pid(job_id: str) -> int:
    """The pid of the node job (submitit's python) of Slurm job or array task `job_id`."""
    root, _, task = job_id.partition("_")
    want = {f"SLURM_ARRAY_JOB_ID={root}".encode(), f"SLURM_ARRAY_TASK_ID={task}".encode()} if task else \
        {f"SLURM_JOB_ID={root}".encode()}
    for d in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes()
            env = set(Path(f"/proc/{d}/environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if b"submitit.core._submit" in cmd and want <= env:
            return int(d)
    raise AssertionError(f"no node job process for {job_id}")


def submitted(root: Path) -> bool:
    return (root / "results").is_dir() and any(e["event"] == "slurm-submitted" for e in journal(root)) \
        if list((root / "results").glob("run_*/journal.jsonl")) else False


PASS_SCRIPT = """#!/bin/bash
echo "args $* FROM_SUBMITTER=${FROM_SUBMITTER:-unset} SLURM_JOB_ID=${SLURM_JOB_ID:-unset} PWD=$PWD"
"$PY" -c "open('data/x/a.txt').read()"  # observed: the needs lock gets the folder
echo "ACC 0.$4"
"""


def test_bring_up_is_idempotent_and_runs_a_job(cluster, tmp_path):
    again = slurm_support.Cluster().up()
    assert again.started == {}  # everything was already up: nothing started twice
    out = tmp_path / "out.txt"
    p = subprocess.run(["sbatch", "--wait", "-o", str(out), "--wrap", "echo ran-on-$SLURMD_NODENAME"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert out.read_text().strip() == f"ran-on-{cluster.hostname}"


def test_a_passing_batch_runs_each_experiment_as_a_job_with_the_explicit_environment(cluster, tmp_path):
    root = project(tmp_path, PASS_SCRIPT, epochs=(1, 2))
    (root / "repos" / "r" / "data" / "x").mkdir(parents=True)
    (root / "repos" / "r" / "data" / "x" / "a.txt").write_text("x")
    env = env_for(tmp_path, FROM_SUBMITTER="yes", PY=PY)
    p = subprocess.run(argv(root, "--time", "5"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    ids = ["r_m_001", "r_m_002"]
    submit = next(e for e in journal(root) if e["event"] == "slurm-submitted")
    assert sorted(submit["jobs"]) == ids
    for n, eid in enumerate(ids, 1):
        r = record(root, eid)
        assert r["status"] == "passed" and r["performance_metrics"] == {"acc": float(f"0.{n}")}
        assert r["slurm"]["job_id"] == submit["jobs"][eid] and r["slurm"]["node"] == cluster.hostname
        assert r["slurm"]["state"] == "COMPLETED" and r["launch"]["backend"] == "slurm"
        # nothing declared to check (what the needs lock adds once a run passed may make it "pass")
        assert "blocked" not in (r["preflight"]["verdict"], r["slurm"]["login_preflight"]["verdict"])
        assert "FROM_SUBMITTER" in r["slurm"]["env_from_submitter"] and "SLURM_JOB_ID" in r["slurm"]["env_from_node"]
        log = (run_dir(root) / eid / "training.log").read_text()
        # the submitter's variable reached the child although sbatch ran with --export=NONE
        assert f"args -n m --epochs {n} FROM_SUBMITTER=yes SLURM_JOB_ID=" in log
        assert f"PWD={root / 'repos' / 'r'}" in log
    with open(run_dir(root) / "summary.csv", newline="") as f:
        assert [(row["experiment_id"], row["status"]) for row in csv.DictReader(f)] == [(i, "passed") for i in ids]
    assert "slurm: 0 pending, 0 running, 2 passed" in p.stderr  # progress, as plain lines when piped
    assert (run_dir(root) / "slurm" / "1").stat().st_mode & 0o077 == 0  # the pickled environment is private
    # the needs lock beside the registry is merged by the submitter, from each passed job's needs.json
    lock = json.loads((root / "needs.lock.json").read_text())
    (folder,) = lock["repos"]["r"]["m"]["folders"]
    assert folder["path"] == "data/x" and folder["last_seen"]["machine"] == cluster.hostname
    assert sum(e["event"] == "needs-lock-merged" for e in journal(root)) == 2


def test_a_need_missing_on_the_node_only_blocks_there(cluster, tmp_path):
    """The login node has ~/data/market; the job's setup line moves HOME, as a node without the
    user's home would: the node's preflight blocks it, naming the node, and nothing runs."""
    root = project(tmp_path, PASS_SCRIPT, requires={"*": [{"path": "~/data/market", "kind": "dataset"}]})
    env = env_for(tmp_path)
    (Path(env["HOME"]) / "data" / "market").mkdir(parents=True)
    (Path(env["HOME"]) / "data" / "market" / "a.jpg").write_bytes(b"x")
    node_home = tmp_path / "node-home"
    node_home.mkdir()
    p = subprocess.run(argv(root, "--setup", f"export HOME={node_home}"), cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    r = record(root, "r_m_001")
    assert r["status"] == "blocked"
    assert r["slurm"]["login_preflight"] == {"verdict": "pass", "blocked_by": []}
    assert r["preflight"]["blocked_by"] == ["cache.path.missing"]
    assert f"on node {cluster.hostname}" in r["error_message"]
    assert str(node_home / "data" / "market") in r["preflight"]["findings"][0]["title"]
    assert "HOME" in r["slurm"]["env_from_setup"]
    assert not (run_dir(root) / "r_m_001" / "training.log").exists()


@pytest.mark.slow
def test_time_limit_and_a_signal_kill_are_recorded_from_slurm(cluster, tmp_path):
    """One batch (Slurm's time limits are minutes): one passes, one runs into --time 1, and the node
    job of the third is killed with SIGKILL (as the OOM killer would), so it dies without a record."""
    script = """#!/bin/bash
echo "start $4"
if [ "$4" = 1 ]; then echo "ACC 0.5"; exit 0; fi
sleep 300
"""
    root = project(tmp_path, script, epochs=(1, 2, 3))
    proc = subprocess.Popen(argv(root, "--time", "1", "--array-parallelism", "3"), cwd=ROOT, env=env_for(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: submitted(root), 60)
        jobs = next(e for e in journal(root) if e["event"] == "slurm-submitted")["jobs"]
        assert wait_for(lambda: attempt_started(root, "r_m_003"), 60)
        os.kill(node_job_pid(jobs["r_m_003"]), signal.SIGKILL)
        out, err = proc.communicate(timeout=200)
    finally:
        proc.kill()
    assert proc.returncode == 1, out + err
    assert record(root, "r_m_001")["status"] == "passed"
    timed = record(root, "r_m_002")
    assert timed["status"] == "failed" and timed["slurm"]["state"] == "TIMEOUT"
    assert timed["error_message"].startswith("killed by Slurm at the job's time limit (--time 1)")
    killed = record(root, "r_m_003")
    assert killed["status"] == "failed" and killed["slurm"]["step_signal"] == signal.SIGKILL
    assert killed["error_message"].startswith("the job was killed by signal 9 (SIGKILL) on node")
    assert jobs["r_m_003"] in killed["error_message"] and killed["slurm"]["state"] == "FAILED"
    assert not batch_jobs(root)


def test_submitter_killed_then_resumed_reattaches_nothing_twice_nothing_lost(cluster, tmp_path):
    ran = tmp_path / "ran.txt"
    script = f"""#!/bin/bash
echo "$4" >> {ran}
sleep 3
echo "ACC 0.$4"
"""
    root = project(tmp_path, script, epochs=(1, 2, 3))
    env = env_for(tmp_path)
    proc = subprocess.Popen(argv(root, "--array-parallelism", "1"), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    assert wait_for(lambda: submitted(root) and ran.exists(), 60)
    proc.kill()  # kill -9: the jobs keep running, the journal knows their ids
    proc.wait(timeout=10)
    assert batch_jobs(root)
    p = subprocess.run([PY, "-m", "runner.cli", "--resume", str(run_dir(root))], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "re-attached to Slurm job" in p.stderr
    assert sorted(ran.read_text().split()) == ["1", "2", "3"]  # each ran exactly once
    events = journal(root)
    assert sum(e["event"] == "slurm-submitted" for e in events) == 1  # nothing submitted again
    assert {e["experiment_id"]: e["status"] for e in events if e["event"] == "experiment-end"} == \
        {"r_m_001": "passed", "r_m_002": "passed", "r_m_003": "passed"}


def test_ctrl_c_cancels_the_batch_jobs_and_exits_130(cluster, tmp_path):
    script = """#!/bin/bash
echo "start $4"
sleep 300
"""
    root = project(tmp_path, script, epochs=(1, 2))
    proc = subprocess.Popen(argv(root), cwd=ROOT, env=env_for(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: submitted(root), 60)
        assert wait_for(lambda: all(attempt_started(root, e) for e in ("r_m_001", "r_m_002")), 60)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 130, out + err
    assert not batch_jobs(root)
    for eid in ("r_m_001", "r_m_002"):
        assert record(root, eid)["status"] == "interrupted"
    assert "mutation-run --resume" in err


@pytest.mark.slow
def test_the_demo_through_slurm_records_what_the_local_backend_records(cluster, tmp_path):
    """settings/demo.json with both backends (overlapping, to save a minute): the same records
    field by field, timings and the backend's own fields aside (scratch_mlp trains; the two that
    need pretrained weights are blocked: the weights are in no cache of this fresh HOME)."""
    env = env_for(tmp_path, DEMO_PYTHON=PY)
    registry = tmp_path / "models_config.json"  # the needs lock is written beside it: not into the checkout
    registry.write_bytes((ROOT / "settings" / "models_config.json").read_bytes())
    common = ["-ec", "settings/demo.json", "--models-config", str(registry), "--project-root", str(ROOT),
              "--only", "settings,cache,env", "--probe-timeout", "1", "--seed", "1", "--require-preflight",
              "--no-energy", "-q"]
    procs = {}
    for b in ("slurm", "local"):
        procs[b] = subprocess.Popen([PY, "-m", "runner.cli", *common, "--backend", b, "--results-dir", str(tmp_path / b)],
                                    cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # one run folder name per second: the second batch starts once the first has its own, so the
        # two batches' run tokens (run_<ts>/<id>, which straggler sweeps look for) differ
        assert wait_for(lambda: list((tmp_path / b).glob("run_*/journal.jsonl")) or procs[b].poll() is not None, 120)
        time.sleep(1.1)
    runs = {}
    for backend, proc in procs.items():
        out = proc.communicate(timeout=300)[0]
        assert proc.returncode == 1, out  # one blocked
        (d,) = (tmp_path / backend).glob("run_*")
        runs[backend] = {r.parent.name: json.loads(r.read_text()) for r in d.glob("*/experiment.json")}
    assert sorted(runs["local"]) == sorted(runs["slurm"]) == ["demo_scratch_mlp_001", "demo_timm_resnet18_003",
                                                               "demo_tv_resnet18_002"]
    statuses = {k: r["status"] for k, r in runs["slurm"].items()}
    assert statuses == {"demo_scratch_mlp_001": "passed", "demo_tv_resnet18_002": "blocked",
                        "demo_timm_resnet18_003": "blocked"}
    for eid in ("demo_tv_resnet18_002", "demo_timm_resnet18_003"):
        blocked = runs["slurm"][eid]
        assert blocked["error_message"].endswith(f" (on node {cluster.hostname})")  # the one intended difference
        blocked["error_message"] = blocked["error_message"].rsplit(" (on node", 1)[0]
    for eid in runs["local"]:
        assert comparable(runs["slurm"][eid]) == comparable(runs["local"][eid]), eid
    assert runs["slurm"]["demo_scratch_mlp_001"]["observed"]["lock"] == str(tmp_path / "needs.lock.json")


TIMING = {"timestamp", "duration_seconds", "started"}
RUN_SPECIFIC = {"slurm", "backend", "job", "MUTATION_RUN_ID"}  # the backend's own fields, the run token


def comparable(obj):
    """A record without timings and the backend's own fields (what must be equal across backends)."""
    if isinstance(obj, dict):
        return {k: comparable(v) for k, v in obj.items() if k not in TIMING | RUN_SPECIFIC}
    if isinstance(obj, list):
        return [comparable(v) for v in obj]
    return obj
