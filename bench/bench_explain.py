"""Benchmark: `mutation-doctor explain` against `grep -rl Traceback` over the same results tree.

Generates N experiment folders in the user's layout (results/run_<ts>/<repo>_<model>_<NNN>/ with
experiment.json, a training.log of --log-bytes and a terminal_output.txt with STDOUT/STDERR
sections of about the same size) in a temporary folder: most succeed (some with a harmless
scipy traceback in the middle of the log, as in the user's runs), some fail with a traceback at the
end (LocalEntryNotFoundError chain, CUDA OOM, missing module), some are killed (no traceback).
Then runs each tool as a child process twice (first right after generation, then again) and
measures wall time and peak RSS (wait4). Prints one JSON object.

    .venv/bin/python bench/bench_explain.py --quick                # 500 folders, 200 kB logs
    .venv/bin/python bench/bench_explain.py                        # the full 10,000 x 1 MB (~20 GB)

Targets (issue 5): explain no slower than the grep, peak RSS under 200 MB.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LEN_CHAIN = """httpcore2.ConnectError: [Errno 111] Connection refused

The above exception was the direct cause of the following exception:

httpx2.ConnectError: [Errno 111] Connection refused

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/home/u/repos/Person_reID_baseline_pytorch/train.py", line 140, in <module>
    model = ft_net_hr(len(class_names), opt.droprate, opt.stride, circle=return_feature)
  File "/home/u/miniconda3/envs/reid/lib/python3.10/site-packages/huggingface_hub/file_download.py", line 1194, in _hf_hub_download_to_cache_dir
    _raise_on_head_call_error(head_call_error, force_download, local_files_only)
huggingface_hub.errors.LocalEntryNotFoundError: An error happened while trying to locate the file on the Hub and we cannot find the requested files in the local cache. Please check your connection and try again or make sure your Internet connection is on.
"""
OOM = """Traceback (most recent call last):
  File "/home/u/repos/examples/mnist_forward_forward/main.py", line 150, in <module>
    loss = net.train(x_pos, x_neg)
RuntimeError: CUDA out of memory. Tried to allocate 192.00 MiB (GPU 0; 9.77 GiB total capacity; 8.10 GiB already allocated; ...)
"""
MODULE = """Traceback (most recent call last):
  File "/home/u/repos/VulBERTa/train.py", line 3, in <module>
    import clang.cindex
ModuleNotFoundError: No module named 'clang'
"""
BENIGN = """Traceback (most recent call last):
  File "/home/u/repos/Person_reID_baseline_pytorch/evaluate_gpu.py", line 1, in <module>
    import scipy.io
ModuleNotFoundError: No module named 'scipy'
"""
REPORT = """
Rank@1:0.879454 Rank@5:0.962886 Rank@10:0.975356 mAP:0.697153
=========================================
Training Report
Status: SUCCESS
=========================================
"""
MODELS = [("Person_reID_baseline_pytorch", "hrnet18"), ("Person_reID_baseline_pytorch", "densenet121"),
          ("Person_reID_baseline_pytorch", "pcb"), ("examples", "mnist"), ("examples", "siamese"),
          ("pytorch_resnet_cifar10", "resnet20")]


def body(size: int, rnd: random.Random) -> bytes:
    lines, n, i = [], 0, 0
    while n < size:
        ln = "Train Epoch: %d [%d/60000 (%d%%)]\tLoss: %.6f\n" % (i // 600 + 1, (i % 600) * 100, i % 100, rnd.random())
        if i % 97 == 0:
            ln = "%dit [00:%02d, %.2fit/s]\r%dit [00:%02d, %.2fit/s]\n" % (i, i % 60, 300 + rnd.random(), i + 48, i % 60, 310.0)
        lines.append(ln)
        n += len(ln)
        i += 1
    data = "".join(lines).encode()[:size]
    return data[: data.rfind(b"\n") + 1]


def generate(root: str, folders: int, log_bytes: int, term_bytes: int, per_run: int, seed: int) -> dict:
    rnd = random.Random(seed)
    base_log = body(log_bytes, rnd)
    base_term = body(term_bytes, rnd)
    kinds = {"ok": 0, "benign": 0, "len": 0, "oom": 0, "module": 0, "killed": 0}
    bar = b"=" * 80
    for k in range(folders):
        run = os.path.join(root, "results", "run_20260106_%06d" % (k // per_run))
        repo, model = MODELS[k % len(MODELS)]
        r = rnd.random()
        kind = ("len" if model == "hrnet18" and r < 0.15 else "oom" if r < 0.03 else "module" if r < 0.05
                else "killed" if r < 0.06 else "benign" if r < 0.16 else "ok")
        kinds[kind] += 1
        eid = "%s_%s_%03d" % (repo, model, k % 1000)
        d = os.path.join(run, eid)
        os.makedirs(d, exist_ok=True)
        ok = kind in ("ok", "benign")
        end = {"ok": REPORT, "benign": BENIGN + REPORT, "len": LEN_CHAIN + "Training FAILED\n",
               "oom": OOM + "Training FAILED\n", "module": MODULE, "killed": "Train Epoch: 9 [0/60000]\n"}[kind]
        mid = len(base_log) // 2
        log = base_log[:mid] + (BENIGN.encode() if kind == "benign" else b"") + base_log[mid:] + end.encode()
        with open(os.path.join(d, "training.log"), "wb") as f:
            f.write(log)
        code = 0 if ok else (137 if kind == "killed" else 1)
        with open(os.path.join(d, "terminal_output.txt"), "wb") as f:
            f.write(bar + b"\nSTDOUT:\n" + bar + b"\n[Train Wrapper] Training script: ./train.sh\n" + base_term
                    + end.encode() + b"[Train Wrapper] Training finished with exit code: %d\n\n" % code
                    + bar + b"\nSTDERR:\n" + bar + b"\n(empty)\n")
        rec = {"experiment_id": eid, "timestamp": "2026-01-07T01:52:45", "repository": repo, "model": model,
               "hyperparameters": {"epochs": 10, "learning_rate": 0.05, "seed": k}, "duration_seconds": 2000 + rnd.random() * 900,
               "energy_metrics": {"gpu_util_max_percent": 70.0, "gpu_power_min_watts": 10.0},
               "performance_metrics": {"rank1": 0.88} if ok else {}, "training_success": ok,
               "retries": 0 if ok else 2,
               "error_message": "Training completed successfully" if ok else "Error pattern found: Training.*FAILED"}
        with open(os.path.join(d, "experiment.json"), "w") as f:
            json.dump(rec, f, indent=2)
    return kinds


def measure(argv, env=None) -> dict:
    # stdout to a real file: GNU grep treats /dev/null output like -q and stops at the first match.
    sink = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=sink, stderr=subprocess.PIPE, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    sink.close()
    p.returncode = os.waitstatus_to_exitcode(status)
    out = {"seconds": round(wall, 3), "peak_rss_mb": round(ru.ru_maxrss / 1024, 1), "exit_code": p.returncode,
           "cpu_seconds": round(ru.ru_utime + ru.ru_stime, 3)}
    for line in err.splitlines():
        if line.startswith("rchar:"):
            out["bytes_read"] = int(line.split()[1])
        if line.startswith("workers_maxrss_kb:"):
            out["worker_peak_rss_mb"] = round(int(line.split()[1]) / 1024, 1)
    return out


# Prints its own I/O counters and the peak RSS of its worker processes (if any) on exit.
EXPLAIN_CHILD = (
    "import sys, resource; from doctor.explain.cli import main; rc = main(sys.argv[1:]);"
    "sys.stderr.write(open('/proc/self/io').read());"
    "sys.stderr.write('workers_maxrss_kb: %d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss);"
    "sys.exit(rc)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folders", type=int, default=10000)
    ap.add_argument("--log-bytes", type=int, default=1024 * 1024)
    ap.add_argument("--terminal-bytes", type=int, default=None, help="default: same as --log-bytes")
    ap.add_argument("--per-run", type=int, default=135, help="experiments per run folder (the user's run had 135)")
    ap.add_argument("--dir", help="parent folder for the generated tree (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated tree")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each tool; the fastest is compared")
    ap.add_argument("--quick", action="store_true", help="500 folders with 200 kB logs (make bench)")
    a = ap.parse_args(argv)
    if a.quick:
        a.folders, a.log_bytes = 500, 200_000
    term = a.log_bytes if a.terminal_bytes is None else a.terminal_bytes
    need = a.folders * (a.log_bytes + term + 4096)
    work = tempfile.mkdtemp(prefix="bench-explain-", dir=a.dir)
    free = shutil.disk_usage(work).free
    if need > free * 0.9:
        shutil.rmtree(work)
        print(json.dumps({"error": f"needs {need / 1e9:.1f} GB, {free / 1e9:.1f} GB free in {os.path.dirname(work)}"}))
        return 2
    try:
        t0 = time.perf_counter()
        kinds = generate(work, a.folders, a.log_bytes, term, a.per_run, a.seed)
        gen = time.perf_counter() - t0
        results = os.path.join(work, "results")
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        explain_argv = [sys.executable, "-c", EXPLAIN_CHILD, results, "--json"]
        grep_argv = ["grep", "-rl", "Traceback", results]
        runs = {"explain": [], "grep": []}
        for _ in range(max(1, a.repeat)):  # the first right after generation, then warm
            runs["grep"].append(measure(grep_argv))
            runs["explain"].append(measure(explain_argv, env))
        out = subprocess.run(explain_argv, capture_output=True, env=env)
        report = json.loads(out.stdout)
        total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(results) for f in fs)
        ex = min(runs["explain"], key=lambda r: r["seconds"])
        gr = min(runs["grep"], key=lambda r: r["seconds"])
        result = {
            "benchmark": "explain_vs_grep",
            "folders": a.folders, "log_bytes": a.log_bytes, "terminal_bytes": term,
            "tree_bytes": total, "generate_seconds": round(gen, 1), "kinds": kinds,
            "cpus": len(os.sched_getaffinity(0)),
            "explain": runs["explain"], "grep": runs["grep"],
            "explain_best_seconds": ex["seconds"], "grep_best_seconds": gr["seconds"],
            "explain_peak_rss_mb": max(r["peak_rss_mb"] for r in runs["explain"]),
            "explain_over_grep": round(ex["seconds"] / gr["seconds"], 3) if gr["seconds"] else None,
            "explain_bytes_read_fraction": round(ex.get("bytes_read", 0) / total, 4) if total else None,
            "causes": report["causes"],
            "statuses": {s: sum(1 for x in report["experiments"] if x["status"] == s)
                         for s in ("succeeded", "failed", "blocked", "suspicious")},
            "targets": {"no_slower_than_grep": ex["seconds"] <= gr["seconds"],
                        # main process + every worker at its peak (an upper bound of the total)
                        "peak_rss_under_200mb": max(r["peak_rss_mb"] + r.get("worker_peak_rss_mb", 0) * 4
                                                    for r in runs["explain"]) < 200},
        }
        print(json.dumps(result))
        return 0
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
