"""Benchmark mutation-run: overhead per experiment against plain subprocess.run of the same no-op
train script, and the runner's own CPU use while a long job runs. Prints one JSON object.

    python bench/bench_runner.py            # 200 experiments, 10 s long job
    python bench/bench_runner.py --quick    # 40 experiments, 4 s long job

Per-experiment overhead is the slope between a batch of N and a batch of N/10 experiments, so the
runner's start-up (imports, the doctor's preflight) is not counted in it; it includes everything the
runner does per experiment: journal fsyncs, experiment.json and summary.csv written atomically, log
capture, metric extraction, the straggler scan.
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
NOOP = '#!/bin/sh\necho "ACC 1.0"\n'
LONG = '#!/bin/sh\ntouch started\nsleep {seconds}\necho "ACC 1.0"\n'
CHATTY = ('#!/bin/sh\ntouch started\nexec {py} -c "import time\nend = time.time() + {seconds}\ni = 0\n'
          'while time.time() < end:\n    i += 1\n    print(f\'step {{i}} loss 0.{{i}}\', flush=True)\n    time.sleep(0.001)\n'
          'print(\'ACC 1.0\')"\n')


def project(base: Path, name: str, script: str, n: int) -> Path:
    root = base / name
    repo = root / "repo"
    repo.mkdir(parents=True)
    (repo / "train.sh").write_text(script)
    (repo / "train.sh").chmod(0o755)
    reg = {"models": {"r": {"path": "repo", "train_script": "./train.sh", "models": ["m"], "model_flag": "-n",
                            "supported_hyperparams": {"epochs": {"flag": "--epochs", "type": "int", "default": 1}},
                            "performance_metrics": {"log_patterns": {"acc": r"ACC ([0-9.]+)"}}}}}
    (root / "models_config.json").write_text(json.dumps(reg))
    exps = [{"mode": "default", "repo": "r", "model": "m", "hyperparameters": {"epochs": 1}}]
    (root / "settings.json").write_text(json.dumps({"experiment_name": name, "runs_per_config": n, "experiments": exps}))
    return root


def runner_argv(root: Path):
    return [sys.executable, "-m", "runner.cli", "-ec", str(root / "settings.json"), "--project-root", str(root),
            "--models-config", str(root / "models_config.json"), "--results-dir", str(root / "results"),
            "--only", "settings,cache", "--retry-delay", "0", "-q"]


def env_for(base: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env["HOME"] = str(base / "home")
    (base / "home").mkdir(exist_ok=True)
    return env


def time_runner(base: Path, n: int, env: dict) -> float:
    root = project(base, f"batch{n}", NOOP, n)
    t0 = time.perf_counter()
    p = subprocess.run(runner_argv(root), cwd=ROOT, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"runner failed ({p.returncode}): {p.stderr[-2000:]}")
    return took


def time_plain(base: Path, n: int) -> float:
    root = project(base, f"plain{n}", NOOP, 1)
    repo = root / "repo"
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run(["./train.sh", "-n", "m", "--epochs", "1"], cwd=repo, capture_output=True, check=True)
    return time.perf_counter() - t0


def runner_cpu(base: Path, name: str, script: str, seconds: float, env: dict) -> dict:
    """CPU seconds of the runner process itself (not its children) while one job runs."""
    import psutil

    root = project(base, name, script.format(seconds=seconds, py=sys.executable), 1)
    proc = subprocess.Popen(runner_argv(root), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = root / "repo" / "started"
    end = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < end and proc.poll() is None:
        time.sleep(0.01)
    me = psutil.Process(proc.pid)
    c0, t0 = me.cpu_times(), time.monotonic()
    window = max(1.0, seconds - 1.0)
    time.sleep(window)
    c1, t1 = me.cpu_times(), time.monotonic()
    proc.wait(timeout=seconds + 60)
    used = (c1.user - c0.user) + (c1.system - c0.system)
    return {"job_seconds": seconds, "window_seconds": round(t1 - t0, 2), "runner_cpu_seconds": round(used, 4),
            "runner_cpu_percent": round(100 * used / (t1 - t0), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="40 experiments and a 4 s job instead of 200 and 10 s")
    ap.add_argument("-n", type=int, help="experiments in the large batch")
    args = ap.parse_args()
    n = args.n or (40 if args.quick else 200)
    small = max(2, n // 10)
    long_s = 4.0 if args.quick else 10.0
    with tempfile.TemporaryDirectory(prefix="bench_runner_") as tmp:
        base = Path(tmp)
        env = env_for(base)
        plain = time_plain(base, n)
        t_small = time_runner(base, small, env)
        t_large = time_runner(base, n, env)
        per_runner = (t_large - t_small) / (n - small)
        per_plain = plain / n
        quiet = runner_cpu(base, "long", LONG, long_s, env)
        chatty = runner_cpu(base, "chatty", CHATTY, long_s, env)
    out = {
        "bench": "runner", "experiments": n, "small_batch": small,
        "plain_subprocess_ms_per_experiment": round(per_plain * 1000, 2),
        "runner_ms_per_experiment": round(per_runner * 1000, 2),
        "overhead_ms_per_experiment": round((per_runner - per_plain) * 1000, 2),
        "overhead_target_ms": 30,
        "runner_startup_seconds": round(t_small - small * per_runner, 3),
        "batch_seconds": round(t_large, 3),
        "cpu_while_quiet_job": quiet,
        "cpu_while_chatty_job": chatty,
        "cpu_target_percent": 2,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
