"""mutation-run end to end with real processes: process groups, signals, timeouts, retries,
parallel mode, the gate, kill -9 and --resume. Train scripts are small bash/python files in tmp."""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
HP = {"epochs": {"flag": "--epochs", "type": "int", "default": 3, "range": [1, 9], "distribution": "uniform"},
      "lr": {"flag": "--lr", "type": "float", "default": 0.1, "range": [0.01, 1.0], "distribution": "log_uniform"}}


def make_project(tmp_path, repos, experiments, **top):
    """A project folder with repos/<name>/train.sh, models_config.json and settings.json."""
    root = tmp_path / "proj"
    reg = {"models": {}}
    for name, r in repos.items():
        d = root / "repos" / name
        d.mkdir(parents=True)
        (d / "train.sh").write_text(r["script"])
        (d / "train.sh").chmod(0o755)
        reg["models"][name] = {"path": f"repos/{name}", "train_script": "./train.sh", "models": r.get("models", ["m"]),
                               "model_flag": "-n", "supported_hyperparams": r.get("hp", HP),
                               "performance_metrics": {"log_patterns": r.get("patterns", {"acc": r"ACC ([0-9.]+)"})},
                               "requires": r.get("requires", {})}
    (root / "models_config.json").write_text(json.dumps(reg))
    settings = {"experiment_name": "t", "max_retries": top.pop("max_retries", 2), "experiments": experiments, **top}
    (root / "settings.json").write_text(json.dumps(settings))
    return root


def runner_argv(root, *args):
    return [PY, "-m", "runner.cli", "--project-root", str(root), "--models-config", str(root / "models_config.json"),
            "-ec", str(root / "settings.json"), "--results-dir", str(root / "results"), "--only", "settings,cache",
            "--probe-timeout", "1", "--retry-delay", "0", "--grace", "1", *args]


def run(root, *args, env, timeout=60):
    return subprocess.run(runner_argv(root, *args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def run_dir(root):
    dirs = sorted((root / "results").glob("run_*"))
    assert len(dirs) == 1, dirs
    return dirs[0]


def record(root, eid):
    return json.loads((run_dir(root) / eid / "experiment.json").read_text())


def summary(root):
    import csv

    with open(run_dir(root) / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_for(predicate, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def entry(repo="r", model="m", mode="default", **kw):
    return {"mode": mode, "repo": repo, "model": model, **kw}


@pytest.fixture
def env(clean_env):
    e = dict(clean_env)
    e["PATH"] = os.path.dirname(PY) + os.pathsep + e.get("PATH", "/usr/bin:/bin")
    return e


# -- success, metrics, warnings ----------------------------------------------------------------
def test_pass_metrics_argv_and_a_run_that_trained_nothing(tmp_path, env):
    ok = '#!/bin/bash\necho "args: $*"\necho "ACC 0.91"\n'
    silent = '#!/bin/bash\necho "starting"; echo "Training completed successfully"\n'
    root = make_project(tmp_path, {"r": {"script": ok}, "s": {"script": silent}},
                        [entry(hyperparameters={"epochs": 2, "lr": 0.5}), entry("s")])
    p = run(root, env=env)
    assert p.returncode == 0, p.stderr
    assert "args: -n m --epochs 2 --lr 0.500000" in p.stdout  # streamed to the terminal
    r = record(root, "r_m_001")
    assert r["status"] == "passed" and r["training_success"] is True and r["exit_code"] == 0
    assert r["performance_metrics"] == {"acc": 0.91}
    assert r["launch"]["argv"] == ["./train.sh", "-n", "m", "--epochs", "2", "--lr", "0.500000"]
    assert r["launch"]["cwd"] == str(root / "repos" / "r")
    assert r["attempts"][0]["log"] == "training.log" and r["attempts"][0]["exit_code"] == 0
    assert (run_dir(root) / "r_m_001" / "training.log").read_text().endswith("ACC 0.91\n")
    s = record(root, "s_m_002")
    assert s["status"] == "passed" and any("trained nothing?" in w for w in s["warnings"])
    rows = summary(root)
    assert [r["status"] for r in rows] == ["passed", "passed"] and rows[0]["perf_acc"] == "0.91"
    events = [json.loads(x)["event"] for x in (run_dir(root) / "journal.jsonl").read_text().splitlines()]
    assert events[0] == "run-start" and events[-1] == "run-end"


def test_missing_module_fails_once_with_the_real_exception(tmp_path, env):
    script = f'#!/bin/bash\necho "loading"\nexec {PY} -c "import scipy_is_not_installed_here"\n'
    root = make_project(tmp_path, {"r": {"script": script}}, [entry()])
    p = run(root, "--json", env=env)
    assert p.returncode == 1
    out = json.loads(p.stdout)  # the experiment's output went to stderr
    assert out["exit_code"] == 1 and out["counts"]["failed"] == 1 and "loading" in p.stderr
    assert out["experiments"][0]["status"] == "failed" and out["run_dir"] == str(run_dir(root))
    r = record(root, "r_m_001")
    assert r["status"] == "failed" and r["training_success"] is False and r["exit_code"] == 1
    assert len(r["attempts"]) == 1 and r["retries"] == 0
    assert r["error_excerpt"] == ["ModuleNotFoundError: No module named 'scipy_is_not_installed_here'"]
    assert "module is missing" in r["error_message"] and "not_retried" in r["attempts"][0]


def test_transient_network_error_is_retried_with_the_reason_and_both_logs_kept(tmp_path, env):
    # first attempt: a real refused connection (urllib), second attempt: success
    script = f'''#!/bin/bash
n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count
if [ $n -eq 1 ]; then
  exec {PY} -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9/x', timeout=5)"
fi
echo "ACC 0.5"
'''
    root = make_project(tmp_path, {"r": {"script": script}}, [entry()])
    p = run(root, env=env)
    assert p.returncode == 0, p.stderr
    r = record(root, "r_m_001")
    assert r["status"] == "passed" and r["retries"] == 1
    a1, a2 = r["attempts"]
    assert a1["log"] == "training.attempt1.log" and a2["log"] == "training.log"
    assert a1["exit_code"] == 1 and "network error" in a1["retry_reason"] and "Connection refused" in a1["retry_reason"]
    assert a2["retry_reason"] is None
    exp = run_dir(root) / "r_m_001"
    assert "URLError" in (exp / "training.attempt1.log").read_text()
    assert (exp / "training.log").read_text().strip() == "ACC 0.5"


def test_timeout_kills_a_child_that_ignores_sigterm_after_the_grace(tmp_path, env):
    script = f'''#!/bin/bash
echo $$ > pid
exec {PY} -c "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
'''
    root = make_project(tmp_path, {"r": {"script": script}}, [entry()])
    t0 = time.monotonic()
    p = run(root, "--timeout", "1", "--max-retries", "0", env=env)
    took = time.monotonic() - t0
    assert p.returncode == 1
    r = record(root, "r_m_001")
    a = r["attempts"][0]
    assert a["timed_out"] is True and a["signal"] == "SIGKILL" and a["exit_code"] is None
    assert 1.9 <= a["duration_seconds"] < 6, a  # SIGTERM at 1 s ignored, SIGKILL after the 1 s grace
    assert r["error_message"].startswith("timed out after 1 s")
    assert not alive(int((root / "repos" / "r" / "pid").read_text()))
    assert took < 30


def test_grandchildren_in_and_out_of_the_group_are_killed_and_reported(tmp_path, env):
    script = '''#!/bin/bash
sleep 300 & echo $! > in_group.pid
setsid sleep 301 > /dev/null 2>&1 < /dev/null & echo $! > escaped.pid
sleep 0.3
echo "ACC 1.0"
'''
    root = make_project(tmp_path, {"r": {"script": script}}, [entry()])
    p = run(root, env=env)
    assert p.returncode == 0, p.stderr
    repo = root / "repos" / "r"
    in_group, escaped = int((repo / "in_group.pid").read_text()), int((repo / "escaped.pid").read_text())
    assert not alive(in_group) and not alive(escaped)
    r = record(root, "r_m_001")
    found = {s["pid"]: s for s in r["stragglers"]}
    assert {in_group, escaped} <= set(found) and all(s["killed"] for s in found.values())
    assert any("process(es) of this experiment were still alive" in w for w in r["warnings"])
    assert r["status"] == "passed"


def test_parallel_background_loops_and_is_gone_at_the_end(tmp_path, env):
    fg = '#!/bin/bash\nsleep 2.5\necho "ACC 0.7"\n'
    bg = '#!/bin/bash\necho "bg $$" >> starts.txt\nsleep 0.2\n'
    bg_long = '#!/bin/bash\necho $$ > pid\nexec sleep 300\n'
    root = make_project(tmp_path, {"f": {"script": fg}, "b": {"script": bg}, "c": {"script": bg_long}}, [
        {"mode": "parallel", "foreground": {"repo": "f", "model": "m", "mode": "default", "hyperparameters": {"epochs": 1}},
         "background": {"repo": "b", "model": "m", "hyperparameters": {}}},
        {"mode": "parallel", "foreground": {"repo": "f", "model": "m", "mode": "default", "hyperparameters": {}},
         "background": {"repo": "c", "model": "m", "hyperparameters": {}}},
    ])
    p = run(root, env=env)
    assert p.returncode == 0, p.stderr
    r = record(root, "f_m_001_parallel")
    assert r["mode"] == "parallel" and r["status"] == "passed"
    assert r["foreground"]["repository"] == "f" and r["foreground"]["performance_metrics"] == {"acc": 0.7}
    assert r["background"]["repository"] == "b" and r["background"]["log"] == "background.log"
    starts = (root / "repos" / "b" / "starts.txt").read_text().splitlines()
    assert len(starts) >= 3 and r["background"]["restarts"] == len(starts) - 1
    assert "=== background start 1" in (run_dir(root) / "f_m_001_parallel" / "background.log").read_text()
    assert not alive(int((root / "repos" / "c" / "pid").read_text()))
    assert summary(root)[0]["repository"] == "f"


# -- the gate and the dry run ---------------------------------------------------------------------
def test_gate_blocks_with_fixes_and_without_the_flag_still_runs_and_records(tmp_path, env):
    ok = '#!/bin/bash\necho "ACC 0.9"\n'
    root = make_project(tmp_path, {"r": {"script": ok, "requires": {"m": [{"path": "data/train.csv", "kind": "dataset"}]}},
                                   "s": {"script": ok}}, [entry(), entry("s")])
    p = run(root, "--require-preflight", env=env)
    assert p.returncode == 1
    r = record(root, "r_m_001")
    assert r["status"] == "blocked" and r["attempts"] == [] and r["exit_code"] is None
    assert r["preflight"]["verdict"] == "blocked" and "cache.path.missing" in r["preflight"]["blocked_by"]
    assert any(f["id"] == "cache.path.missing" and f["fix"] for f in r["preflight"]["findings"])
    assert not (run_dir(root) / "r_m_001" / "training.log").exists()
    assert record(root, "s_m_002")["status"] == "passed"
    assert "blocked by cache.path.missing" in p.stderr and "fix:" in p.stderr
    for d in (root / "results").glob("run_*"):
        import shutil
        shutil.rmtree(d)
    p = run(root, env=env)
    assert p.returncode == 0, p.stderr
    r = record(root, "r_m_001")
    assert r["status"] == "passed" and r["preflight"]["verdict"] == "blocked"


def test_dry_run_prints_argv_env_and_verdicts_and_runs_nothing(tmp_path, env):
    script = '#!/bin/bash\ntouch ran\n'
    root = make_project(tmp_path, {"r": {"script": script}}, [entry(mode="mutation", mutate=["lr"], runs_per_config=3)])
    p = run(root, "--dry-run", "--json", "--seed", "5", env=env)
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["dry_run"] is True and data["seed"] == 5 and len(data["experiments"]) == 3
    lrs = set()
    for e in data["experiments"]:
        # the script runs no Python: nothing it needs could be established
        assert e["verdict"] == "unverified" and e["argv"][:3] == ["./train.sh", "-n", "m"]
        assert e["argv"][3] == "--lr" and len(e["argv"][4].split(".")[1]) == 6
        lrs.add(e["argv"][4])
    assert len(lrs) == 3
    assert not (root / "repos" / "r" / "ran").exists() and not (root / "results").exists()
    again = json.loads(run(root, "--dry-run", "--json", "--seed", "5", env=env).stdout)
    assert [e["argv"] for e in again["experiments"]] == [e["argv"] for e in data["experiments"]]
    text = run(root, "--dry-run", "--seed", "5", env=env)
    assert "./train.sh -n m --lr" in text.stdout and "3 of 3 can run" in text.stdout


def test_usage_errors_are_one_line(tmp_path, env):
    root = make_project(tmp_path, {"r": {"script": "#!/bin/bash\n"}}, [entry()])
    for args in (["--timeout", "0"], ["--resume", str(tmp_path / "nope")], ["--max-retries", "-1"]):
        p = run(root, *args, env=env)
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1 and "mutation-run: error:" in p.stderr


# -- interruptions ----------------------------------------------------------------------------------
def test_ctrl_c_stops_the_experiment_writes_the_summary_and_exits_130(tmp_path, env):
    script = ('#!/bin/bash\n[ -e release ] && { echo "ACC 0.8"; exit 0; }\n'
              'echo $$ > pid\ntrap "echo got TERM; exit 143" TERM\nwhile true; do sleep 0.1; done\n')
    root = make_project(tmp_path, {"r": {"script": script}}, [entry(), entry(hyperparameters={"epochs": 5})])
    proc = subprocess.Popen(runner_argv(root), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pidfile = root / "repos" / "r" / "pid"
    assert wait_for(pidfile.exists), "experiment never started"
    time.sleep(0.3)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert time.monotonic() - t0 < 5  # grace is 1 s
    assert not alive(int(pidfile.read_text()))
    r = record(root, "r_m_001")
    assert r["status"] == "interrupted" and r["attempts"][0]["interrupted"] is True
    assert "got TERM" in (run_dir(root) / "r_m_001" / "training.log").read_text()  # SIGTERM reached the group
    rows = summary(root)
    assert [x["status"] for x in rows] == ["interrupted"]
    assert "--resume" in err
    # resumed: the interrupted experiment runs again (its first log kept aside), then the rest
    (root / "repos" / "r" / "release").touch()
    p = subprocess.run([PY, "-m", "runner.cli", "--resume", str(run_dir(root))], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    r = record(root, "r_m_001")
    assert r["status"] == "passed" and [a["log"] for a in r["attempts"]] == ["training.attempt1.log", "training.log"]
    assert r["attempts"][0]["interrupted"] is True and r["retries"] == 0
    assert "got TERM" in (run_dir(root) / "r_m_001" / "training.attempt1.log").read_text()
    assert [x["status"] for x in summary(root)] == ["passed", "passed"]


def stop_all(proc, pids=()):
    """Whatever the outcome, nothing a test started outlives it (the runner's tree, the trainings)."""
    import psutil

    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        tree = []
    for p in tree:
        with contextlib.suppress(psutil.Error):
            p.kill()
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    proc.kill()
    proc.wait(timeout=10)


def watchdog_of(runner_pid):
    import psutil

    kids = psutil.Process(runner_pid).children()
    return next(k for k in kids if "runner.backends.watchdog" in " ".join(k.cmdline()))


def test_kill_9_of_the_runner_takes_its_training_and_the_trainings_children_with_it(tmp_path, env):
    script = """#!/bin/bash
sleep 300 & echo $! > ../grandchild.pid
setsid sleep 301 > /dev/null 2>&1 < /dev/null & echo $! > ../escaped.pid
echo $$ > ../leader.pid
trap "" TERM
while true; do sleep 0.1; done
"""
    root = make_project(tmp_path, {"r": {"script": script}}, [entry()])
    proc = subprocess.Popen(runner_argv(root), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pidfile = root / "repos" / "leader.pid"
    assert wait_for(pidfile.exists), "experiment never started"
    pids = [int((root / "repos" / f).read_text()) for f in ("leader.pid", "grandchild.pid", "escaped.pid")]
    try:
        assert all(alive(p) for p in pids)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # the leader ignores SIGTERM: only the watchdog's SIGKILL after the grace ends it
        assert wait_for(lambda: not any(alive(p) for p in pids)), [p for p in pids if alive(p)]
    finally:
        stop_all(proc, pids)


def test_kill_9_mid_batch_then_resume_reruns_only_what_did_not_finish(tmp_path, env):
    script = '''#!/bin/bash
echo "$$ $*" >> ../runs.txt
if [ "$4" = "2" ] && [ ! -e ../release ]; then
  echo $$ > ../leader.pid
  sleep 120 & echo $! > ../blocked.pid
  wait
fi
echo "ACC 0.$4"
'''
    exps = [entry(hyperparameters={"epochs": n}) for n in (1, 2, 3)]
    root = make_project(tmp_path, {"r": {"script": script}}, exps)
    proc = subprocess.Popen(runner_argv(root), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    blocked = root / "repos" / "blocked.pid"
    assert wait_for(blocked.exists), "second experiment never started"
    # the runner and its watchdog die together: the training's leader still gets SIGTERM from
    # the kernel (it asked for it before exec), the leader's child is left for the resume to find
    watchdog = watchdog_of(proc.pid)
    proc.send_signal(signal.SIGKILL)
    watchdog.kill()
    proc.wait(timeout=10)
    leader, orphan = int((root / "repos" / "leader.pid").read_text()), int(blocked.read_text())
    assert wait_for(lambda: not alive(leader))
    assert alive(orphan)  # the training's child outlives a runner killed with its watchdog...
    (root / "repos" / "release").touch()
    rd = run_dir(root)
    p = subprocess.run([PY, "-m", "runner.cli", "--resume", str(rd), "--retry-delay", "0"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert not alive(orphan)  # ...until the resume stops it before running the experiment again
    runs = [line.split(" ", 1)[1] for line in (root / "repos" / "runs.txt").read_text().splitlines()]
    assert runs == ["-n m --epochs 1", "-n m --epochs 2", "-n m --epochs 2", "-n m --epochs 3"]
    r2 = record(root, "r_m_002")
    assert r2["status"] == "passed"
    first, second = r2["attempts"]
    assert first["interrupted"] is True and first["log"] == "training.attempt1.log" and first["exit_code"] is None
    assert second["attempt"] == 2 and second["log"] == "training.log" and second["exit_code"] == 0
    assert r2["retries"] == 0 and r2.get("stragglers")
    assert [x["status"] for x in summary(root)] == ["passed", "passed", "passed"]
    from runner.results import Journal  # the resume writes its own segment (journal.2.jsonl)

    events = Journal.read(str(rd / "journal.jsonl"))
    assert any(e["event"] == "experiment-end" and e.get("by") == "resume" and e["status"] == "interrupted" for e in events)
    assert sum(1 for e in events if e["event"] == "experiment-end" and e["experiment_id"] == "r_m_001") == 1


# -- the GPU between experiments ------------------------------------------------------------------
def test_foreign_gpu_process_recorded_and_wait_for_gpu_waits_for_memory(tmp_path, env):
    pytest.importorskip("core.gpu")
    from tests.support import fake_nvidia_smi

    bindir = tmp_path / "bin"
    stray = subprocess.Popen(["sleep", "60"])  # an orphaned training holding GPU memory
    try:
        state = {"driver": "535.104.05", "cuda": "12.2",
                 "gpus": [{"uuid": "GPU-0", "name": "NVIDIA GeForce RTX 3080", "memory_total": 10240,
                           "memory_used": 7168, "compute_cap": "8.6"}],
                 "processes": [{"pid": stray.pid, "gpu_uuid": "GPU-0", "used_memory": 7000, "process_name": "python"}]}
        fake_nvidia_smi.install(bindir, state)
        env = dict(env, PATH=f"{bindir}{os.pathsep}{env['PATH']}")
        ok = '#!/bin/bash\necho "ACC 0.9"\n'
        root = make_project(tmp_path, {"r": {"script": ok, "requires": {"m": [{"gpu_memory_gb": 4}]}}}, [entry()])
        proc = subprocess.Popen(runner_argv(root, "--wait-for-gpu", "30"), cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert wait_for(lambda: list((root / "results").glob("run_*/journal.jsonl")))  # the batch has begun
        time.sleep(1.5)
        assert proc.poll() is None  # 3 GiB free, 4 needed: still waiting...
        assert not (run_dir(root) / "r_m_001" / "training.log").exists()  # ...and the experiment not started
        state["gpus"][0]["memory_used"] = 1024
        fake_nvidia_smi.write_state(bindir, state)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        r = record(root, "r_m_001")
        assert [p["pid"] for p in r["gpu_foreign_processes"]] == [stray.pid]
        assert r["gpu_foreign_processes"][0]["memory_mib"] == 7000
        assert r["gpu_wait_seconds"] > 0 and "waiting up to 30 s for 4 GiB" in err
    finally:
        stray.kill()
        stray.wait()


def test_nohup_keeps_sighup_ignored(tmp_path, env):
    script = '#!/bin/bash\necho $$ > pid\nsleep 1.5\necho "ACC 0.3"\n'
    root = make_project(tmp_path, {"r": {"script": script}}, [entry()])
    proc = subprocess.Popen(["nohup", *runner_argv(root)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert wait_for((root / "repos" / "r" / "pid").exists)
    proc.send_signal(signal.SIGHUP)  # the terminal closed
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert record(root, "r_m_001")["status"] == "passed"


def test_help_is_cheap_and_names_the_flags_the_makefile_uses():
    code = ("import sys; sys.argv=['mutation-run','--help']\n"
            "from runner.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', [m for m in ('torch','timm','torchvision','huggingface_hub') if m in sys.modules])")
    p = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in p.stdout
    for flag in ("--require-preflight", "--results-dir", "--timeout SECONDS", "--probe-timeout", "--resume", "--dry-run",
                 "--grace", "--seed", "--wait-for-gpu", "--max-retries", "--json", "-ec"):
        assert flag in p.stdout, flag


FAKE_PERF = r'''#!/bin/bash
# perf stand-in: `perf stat -a -e EVENTS [-o FILE] -- cmd...` runs cmd and reports RAPL joules like perf
out=""; events=""
while [ "$1" != "--" ]; do
  case "$1" in -o) out="$2"; shift;; -e) events="$2"; shift;; esac; shift
done
shift
"$@"; rc=$?
{ printf '# started on Sat Nov 22 17:59:19 2025\n\n\n Performance counter stats for '"'"'system wide'"'"':\n\n'
  printf '         10,342.15 Joules power/energy-pkg/\n'
  case "$events" in *energy-ram*) printf '            727.19 Joules power/energy-ram/\n';; esac
  printf '\n     1.530692370 seconds time elapsed\n\n'; } > "${out:-/dev/stderr}"
exit $rc
'''


def test_energy_is_measured_by_wrapping_in_perf_stat_where_the_plan_asks(tmp_path, env):
    pytest.importorskip("checks.system")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "perf").write_text(FAKE_PERF)
    (bindir / "perf").chmod(0o755)
    env = dict(env, PATH=f"{bindir}{os.pathsep}{env['PATH']}")
    script = '#!/bin/bash\necho "ACC 0.$4"\nexit $(( $4 == 2 ? 3 : 0 ))\n'
    root = make_project(tmp_path, {"r": {"script": script}},
                        [entry(hyperparameters={"epochs": 1}), entry(hyperparameters={"epochs": 2})],
                        governor="performance")
    p = run(root, env=env)
    assert p.returncode == 1, p.stderr
    ok, bad = record(root, "r_m_001"), record(root, "r_m_002")
    assert ok["launch"]["argv"][:7] == [str(bindir / "perf"), "stat", "-a", "-e",
                                       "power/energy-pkg/,power/energy-ram/", "-o",
                                       str(run_dir(root) / "r_m_001" / "energy" / "cpu_energy_raw.txt")]
    assert ok["launch"]["argv"][8:] == ["./train.sh", "-n", "m", "--epochs", "1"]
    assert ok["energy_metrics"] == {"cpu_energy_pkg_joules": 10342.15, "cpu_energy_ram_joules": 727.19,
                                    "cpu_energy_total_joules": 11069.34}
    assert "Total CPU Energy (Joules): 11069.34" in (run_dir(root) / "r_m_001" / "energy" / "cpu_energy.txt").read_text()
    assert bad["status"] == "failed" and bad["exit_code"] == 3  # perf passes the command's exit status on
    row = summary(root)[0]
    assert row["energy_cpu_pkg_joules"] == "10342.15" and row["energy_cpu_total_joules"] == "11069.34"
    p = run(root, "--no-energy", "--dry-run", "--json", env=env)
    assert all(e["energy"] is None for e in json.loads(p.stdout)["experiments"])


def test_energy_asked_but_unreadable_runs_unwrapped_with_a_warning(tmp_path, env):
    pytest.importorskip("checks.system")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "perf").write_text("#!/bin/bash\necho 'event syntax error: power/energy-pkg/' >&2\nexit 129\n")
    (bindir / "perf").chmod(0o755)
    env = dict(env, PATH=f"{bindir}{os.pathsep}{env['PATH']}")
    root = make_project(tmp_path, {"r": {"script": '#!/bin/bash\necho "ACC 0.4"\n'}}, [entry()], governor="performance")
    p = run(root, env=env)
    assert p.returncode == 0, p.stderr
    r = record(root, "r_m_001")
    assert r["launch"]["argv"][0] == "./train.sh" and r["energy_metrics"] == {}
    assert any(w.startswith("energy not measured:") and "event syntax error" in w for w in r["warnings"])


def test_registry_interpreter_comes_first_on_the_childs_path(tmp_path, env):
    pybin = tmp_path / "envs" / "reid" / "bin"
    pybin.mkdir(parents=True)
    (pybin / "python").symlink_to(PY)
    script = '#!/bin/bash\necho "python=$(command -v python)"\necho "ACC 0.1"\n'
    root = make_project(tmp_path, {"r": {"script": script, "requires": {"*": [{"python": str(pybin / "python")}]}}}, [entry()])
    p = run(root, env=env)
    assert p.returncode == 0, p.stderr
    r = record(root, "r_m_001")
    assert r["launch"]["env_set"]["PATH"].split(os.pathsep)[0] == str(pybin)
    assert f"python={pybin / 'python'}" in (run_dir(root) / "r_m_001" / "training.log").read_text()


def test_a_secret_in_the_failure_stays_out_of_records_journal_and_status_lines(tmp_path, env):
    secret = "s3cr3t-value-of-the-key"
    script = f'#!/bin/bash\nexec {PY} -c "import os; raise KeyError(os.environ[\'MY_API_KEY\'])"\n'
    root = make_project(tmp_path, {"r": {"script": script}}, [entry()])
    p = run(root, "-q", env=dict(env, MY_API_KEY=secret))
    assert p.returncode == 1
    rd = run_dir(root)
    assert secret in (rd / "r_m_001" / "training.log").read_text()  # the experiment's own log is left as it is
    r = record(root, "r_m_001")
    assert r["error_excerpt"] == ["KeyError: '***'"] and "KeyError: '***'" in r["attempts"][0]["not_retried"]
    assert "KeyError: '***'" in p.stderr  # the outcome line names the real exception, masked
    for text in (p.stdout, p.stderr, *(f.read_text() for f in rd.rglob("*") if f.is_file() and f.name != "training.log")):
        assert secret not in text


def test_under_real_sudo_a_kill_9_of_the_root_runner_takes_its_training_with_it(tmp_path):
    import psutil

    from tests.support import sudo_user

    why = sudo_user.skip_reason()
    if why:
        pytest.skip(why)
    script = """#!/bin/bash
sleep 300 & echo $! > grandchild.pid
echo $$ > leader.pid
trap "" TERM
while true; do sleep 0.1; done
"""
    with sudo_user.throwaway_user() as u:
        root = make_project(Path(u.mkdir("work")), {"r": {"script": script}}, [entry()])
        subprocess.run(["chown", "-R", f"{u.uid}:{u.gid}", str(root)], check=True)
        argv = ["sudo", "-n", os.path.join(os.path.dirname(PY), "mutation-run")] + runner_argv(root)[3:]
        proc = subprocess.Popen(u.argv(argv), env=u.env(), cwd=u.home, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            repo = root / "repos" / "r"
            assert wait_for((repo / "leader.pid").exists, 60), "experiment never started"
            pids = [int((repo / f).read_text()) for f in ("leader.pid", "grandchild.pid")]
            tree = psutil.Process(proc.pid).children(recursive=True)
            runner = next(p for p in tree
                          if p.name() != "sudo" and "mutation-run" in " ".join(p.cmdline()) and p.uids().real == 0)
            runner.kill()
            assert wait_for(lambda: not any(alive(p) for p in pids)), [p for p in pids if alive(p)]
        finally:
            stop_all(proc, pids)


def _start_in_the_same_second(roots, env, tries=3):
    """Two runners started at once whose run folders got the same name (one second apart they
    would not): [(runner, run folder, pid of the training's child)], or None after `tries`."""
    import shutil

    for _ in range(tries):
        time.sleep(1.02 - time.time() % 1)  # just after a second begins
        procs = [subprocess.Popen(runner_argv(r), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for r in roots]
        started = all(wait_for((r / "repos" / "child.pid").exists) for r in roots)
        pids = [int((r / "repos" / "child.pid").read_text()) for r in roots if (r / "repos" / "child.pid").exists()]
        if started and run_dir(roots[0]).name == run_dir(roots[1]).name:
            return [(p, run_dir(r), pid) for p, r, pid in zip(procs, roots, pids)]
        for p in procs:
            stop_all(p, pids)
            p.wait(timeout=10)
        for r in roots:
            shutil.rmtree(r / "results", ignore_errors=True)
            (r / "repos" / "child.pid").unlink(missing_ok=True)
    return None


def test_two_batches_started_in_the_same_second_never_stop_each_others_trainings(tmp_path, env):
    # same second, different results folders: run folders of the same name; the resume of one
    # stops its own leftovers and nothing of the other batch
    script = """#!/bin/bash
[ -e ../release ] && exit 0
sleep 120 & echo $! > ../child.pid
wait
"""
    a, b = roots = [make_project(tmp_path / n, {"r": {"script": script}}, [entry()]) for n in ("a", "b")]
    both = _start_in_the_same_second(roots, env)
    if both is None:
        pytest.skip("the two runners never created their run folders in the same second")
    (pa, rd_a, orphan), (pb, rd_b, other) = both
    try:
        watchdog = watchdog_of(pa.pid)
        pa.send_signal(signal.SIGKILL)  # the first batch's runner dies with its watchdog: its training's child is left
        watchdog.kill()
        pa.wait(timeout=10)
        assert alive(orphan) and alive(other)
        (a / "repos" / "release").touch()
        p = subprocess.run([PY, "-m", "runner.cli", "--resume", str(rd_a), "--retry-delay", "0"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert alive(other), "the resume of one batch stopped the other batch's training"
        assert not alive(orphan)  # its own leftover is stopped
        tokens = [json.loads((rd / "run.json").read_text())["run_token"] for rd in (rd_a, rd_b)]
        assert tokens[0] != tokens[1] and all(t.startswith(rd_a.name + ".") for t in tokens)
    finally:
        stop_all(pb, [orphan, other])
        stop_all(pa, [orphan, other])
