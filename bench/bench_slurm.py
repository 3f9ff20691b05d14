"""Benchmark the Slurm backend on the test cluster (tests/support/slurm.py brings it up): the time
mutation-run --backend slurm takes per experiment against a bare `sbatch --wait` of the same
command, and the submitter's CPU use while its jobs run. Prints one JSON object.

    python bench/bench_slurm.py            # 4 experiments x 3 repeats, 20 s jobs for the CPU figure
    python bench/bench_slurm.py --quick    # 2 experiments x 1 repeat, 8 s jobs

Overhead per experiment = (mutation-run wall time - the slowest bare `sbatch --wait` of the same
commands, all submitted at once) / experiments. It includes what the backend adds: the login
preflight, submitit's pickling and array submission, the node job's Python start-up and its
preflight on the node, the records, journal and summary, and the polling that notices the end.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SCRIPT = '#!/bin/sh\nsleep {seconds}\necho "ACC 1.0"\n'


def project(base: Path, name: str, n: int, seconds: float) -> Path:
    from bench.bench_runner import project as runner_project

    return runner_project(base, name, SCRIPT.format(seconds=seconds), n)


def runner(root: Path, env: dict, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "runner.cli", "-ec", str(root / "settings.json"), "--project-root", str(root),
            "--models-config", str(root / "models_config.json"), "--results-dir", str(root / "results"),
            "--only", "settings,cache", "--backend", "slurm", "-q", *extra]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def bare(root: Path, n: int, env: dict) -> float:
    """n `sbatch --wait` of the train script at once (the same command, cwd and log), until the last ends."""
    t0 = time.monotonic()
    procs = [subprocess.Popen(["sbatch", "--wait", "--export=ALL", "-o", str(root / f"bare{i}.log"),
                               "-D", str(root / "repo"), str(root / "repo" / "train.sh"), "-n", "m", "--epochs", "1"],
                              env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(n)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"bare sbatch --wait failed: {codes}")
    return time.monotonic() - t0


def cpu_of(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def submitter_cpu(base: Path, env: dict, seconds: float) -> dict:
    """CPU seconds the submitter uses per wall second while its (one) job runs, from its submission
    to its end (squeue polls, sacct, records)."""
    root = project(base, "cpu", 1, seconds)
    proc = runner(root, env)
    journal = None
    while proc.poll() is None:
        found = list((root / "results").glob("run_*/journal.jsonl"))
        if found and "slurm-submitted" in found[0].read_text():
            journal = found[0]
            break
        time.sleep(0.05)
    if journal is None:
        raise RuntimeError("mutation-run ended before submitting")
    c0, t0 = cpu_of(proc.pid), time.monotonic()
    last = c0
    while proc.poll() is None:
        try:
            last = cpu_of(proc.pid)  # the last sample before it exits
        except Exception:  # noqa: BLE001 - it just ended
            break
        time.sleep(0.2)
    wall = time.monotonic() - t0
    used = last - c0  # sampled every 0.2 s: the last fraction of a second before the exit is not counted
    return {"job_seconds": seconds, "waiting_wall_s": round(wall, 2), "submitter_cpu_s": round(used, 3),
            "submitter_cpu_percent": round(100 * used / wall, 2) if wall else None}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n, repeats, long_s = (2, 1, 8.0) if args.quick else (4, 3, 20.0)

    from tests.support import slurm as slurm_support

    reason = slurm_support.skip_reason()
    if reason:
        print(json.dumps({"bench": "slurm", "skipped": reason}))
        return 0
    cluster = slurm_support.Cluster().up()
    try:
        env = dict(os.environ, **cluster.env())
        out = {"bench": "slurm", "experiments": n, "repeats": repeats, "job_seconds": 1.0}
        with tempfile.TemporaryDirectory(prefix="bench-slurm-") as tmp:
            base = Path(tmp)
            env["HOME"] = str(base / "home")
            (base / "home").mkdir()
            runs, bares = [], []
            for r in range(repeats):
                root = project(base, f"batch{r}", n, 1.0)
                bares.append(bare(root, n, env))
                t0 = time.monotonic()
                code = runner(root, env).wait()
                runs.append(time.monotonic() - t0)
                if code != 0:
                    raise RuntimeError(f"mutation-run --backend slurm exited {code}")
            run_s, bare_s = min(runs), min(bares)
            out.update(mutation_run_s=round(run_s, 2), bare_sbatch_wait_s=round(bare_s, 2),
                       overhead_per_experiment_s=round((run_s - bare_s) / n, 2),
                       all_runs_s=[round(x, 2) for x in runs], all_bare_s=[round(x, 2) for x in bares])
            out["submitter_while_jobs_run"] = submitter_cpu(base, env, long_s)
    finally:
        cluster.down()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
