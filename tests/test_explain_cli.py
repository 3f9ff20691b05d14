"""The `explain` command line: exit codes, one-line errors, JSON, Markdown, secrets, imports."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from doctor.explain import explain_path, main

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def _exp(run: Path, eid: str, log: str = None, **rec) -> Path:
    d = run / eid
    d.mkdir(parents=True)
    base = {"experiment_id": eid, "timestamp": "2026-01-07T01:52:45", "repository": "examples", "model": "mnist",
            "hyperparameters": {"epochs": 2, "batch_size": 64}, "duration_seconds": 120.0,
            "energy_metrics": {}, "performance_metrics": {"test_accuracy": 92.0}, "training_success": True,
            "retries": 0, "error_message": "Training completed successfully"}
    base.update(rec)
    (d / "experiment.json").write_text(json.dumps(base, indent=2))
    if log is not None:
        (d / "training.log").write_text(log)
    return d


def _run(*args, env=None):
    return subprocess.run([PY, "-m", "doctor.explain", *args], cwd=str(ROOT), capture_output=True, text=True,
                          timeout=60, env=env)


@pytest.mark.parametrize("case", ["missing", "file", "empty", "broken-json", "not-object", "bad-option",
                                  "markdown-dir", "small-cap"])
def test_unusable_input_is_one_line_and_exit_2(tmp_path, case, capsys):
    target = tmp_path / "results"
    extra = []
    if case == "missing":
        target = tmp_path / "nope"
    elif case == "file":
        target = tmp_path / "f.txt"
        target.write_text("x")
    elif case == "empty":
        target.mkdir()
    elif case in ("broken-json", "not-object"):
        target = tmp_path / "exp"
        target.mkdir()
        (target / "experiment.json").write_text('{"experiment_id": ' if case == "broken-json" else "[1, 2]")
    else:
        _exp(target, "e1")
        extra = {"bad-option": ["--no-such-option"], "markdown-dir": ["--markdown", str(tmp_path / "no" / "r.md")],
                 "small-cap": ["--max-log-bytes", "10"]}[case]
    code = main([str(target), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("mutation-doctor explain: ")


def test_broken_record_inside_a_batch_is_reported_not_fatal(tmp_path):
    run = tmp_path / "run_1"
    _exp(run, "good")
    (run / "bad").mkdir()
    (run / "bad" / "experiment.json").write_text("{ truncated")
    r = explain_path(str(run))
    bad = [e for e in r.explanations if e.experiment_id == "bad"][0]
    assert bad.status == "failed" and bad.cause.id == "unknown" and "not valid JSON" in bad.evidence[0].text
    assert r.exit_code == 1


def test_python_m_json_without_heavy_imports(tmp_path):
    run = tmp_path / "run_1"
    _exp(run, "ok", log="Train Epoch: 1\nTest Accuracy: 92%\n")
    code = ("import sys, io, contextlib, json\n"
            "from doctor.explain import main\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n"
            f"    rc = main([{str(run)!r}, '--json'])\n"
            "heavy = [m for m in ('torch', 'timm', 'torchvision', 'huggingface_hub') if m in sys.modules]\n"
            "print(json.dumps({'rc': rc, 'heavy': heavy, 'out': json.loads(buf.getvalue())}))\n")
    r = subprocess.run([PY, "-c", code], cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    data = json.loads(r.stdout)
    assert data["rc"] == 0 and data["heavy"] == []
    assert data["out"]["experiments"][0]["status"] == "succeeded"
    r = _run(str(run), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["format_version"] == 1
    r = _run(str(tmp_path / "missing"))
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_terminal_output_and_verbose(tmp_path, capsys):
    run = tmp_path / "run_1"
    _exp(run, "ok")
    _exp(run, "bad", log="Traceback (most recent call last):\n  File \"t.py\", line 1, in <module>\n"
                        "ModuleNotFoundError: No module named 'sklearn'\n", training_success=False,
         error_message="Error pattern found: Training.*FAILED")
    assert main([str(run)]) == 1
    out = capsys.readouterr().out
    assert "python.module-missing" in out and "pip install scikit-learn" in out
    assert "1 succeeded, 1 failed" in out and "--rerun FILE" in out
    assert main([str(run), "-v"]) == 1
    out = capsys.readouterr().out
    assert "evidence" in out and "training.log:3" in out and "✓ ok" in out


def test_piped_report_keeps_fix_commands_whole(tmp_path):
    run = tmp_path / "run_1"
    _exp(run, "bad_" + "x" * 90, log="Traceback (most recent call last):\n  File \"t.py\", line 1, in <module>\n"
                                    "ModuleNotFoundError: No module named 'sklearn'\n", training_success=False,
         error_message="Error pattern found: Training.*FAILED")
    broken = run / ("broken_" + "y" * 80)
    broken.mkdir()
    (broken / "experiment.json").write_text("{ truncated")
    r = _run(str(run))
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    assert any(ln.strip() == "python3 -m pip install scikit-learn" for ln in lines), r.stdout
    assert any(ln.strip() == f"cat {broken / 'experiment.json'}" for ln in lines), r.stdout
    assert any(("bad_" + "x" * 90) in ln for ln in lines), r.stdout


def test_secrets_never_appear(tmp_path, capsys):
    run = tmp_path / "run_1"
    token = "hf_" + "Ab3" * 10
    log = ("Traceback (most recent call last):\n"
           '  File "/venv/lib/python3.11/site-packages/huggingface_hub/file_download.py", line 1, in f\n'
           f"httpx2.ProxyError: Unable to connect to proxy http://alice:s3cretPW@proxy.corp:3128 (token {token})\n")
    _exp(run, "px", log=log, training_success=False, status="failed", exit_code=1,
         launch={"how": "sudo", "env_set": {"HTTPS_PROXY": "http://***@proxy.corp:3128", "HF_TOKEN": "***"}})
    assert main([str(run), "--json"]) == 1
    out = capsys.readouterr().out
    assert "s3cretPW" not in out and token not in out
    e = json.loads(out)["experiments"][0]
    assert e["cause"]["id"] == "hub.proxy" and "proxy.corp:3128" in e["evidence"][0]["text"]
    assert main([str(run), "--markdown", str(tmp_path / "r.md")]) == 1
    capsys.readouterr()
    assert "s3cretPW" not in (tmp_path / "r.md").read_text()


def test_markdown_for_a_success_only_batch(tmp_path, capsys):
    run = tmp_path / "run_1"
    _exp(run, "ok")
    md = tmp_path / "r.md"
    assert main([str(run), "--markdown", str(md)]) == 0
    text = md.read_text()
    assert "1 experiment in 1 run folder: 1 succeeded" in text and "Nothing: no experiment failed" in text
    assert not (tmp_path / "r.rerun.json").exists()


def test_markdown_replaces_a_planted_link_and_leaves_its_target_alone(tmp_path, capsys):
    run = tmp_path / "run_1"
    _exp(run, "ok")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    md = tmp_path / "r.md"
    md.symlink_to(victim)
    assert main([str(run), "--markdown", str(md)]) == 0
    assert victim.read_text() == "keep me\n"
    assert not md.is_symlink() and "Nothing: no experiment failed" in md.read_text()


@pytest.mark.parametrize("finding_id", ["system.disk.low", "system.disk.inodes"])
def test_a_run_held_back_for_a_full_disk_is_explained_as_disk_full(tmp_path, capsys, finding_id):
    run = tmp_path / "run_1"
    finding = {"id": finding_id, "status": "fail", "title": "only 0.2 GiB free for /srv/results",
               "fix": ["df -h /srv/results"]}
    _exp(run, "held", training_success=False, status="blocked", exit_code=None, attempts=[],
         preflight={"verdict": "blocked", "blocked_by": [finding_id], "findings": [finding]})
    assert main([str(run), "--json"]) == 1
    e = json.loads(capsys.readouterr().out)["experiments"][0]
    assert e["cause"]["id"] == "disk.full"


def test_single_experiment_path_and_explicit_rerun(tmp_path, capsys):
    run = tmp_path / "run_1"
    d = _exp(run, "examples_mnist_001", log="Killed\n", training_success=False,
             error_message="Error pattern found: Training.*FAILED", retries=1)
    rr = tmp_path / "again.json"
    assert main([str(d), "--json", "--rerun", str(rr)]) == 1
    e = json.loads(capsys.readouterr().out)["experiments"][0]
    assert e["path"] == str(d) and e["cause"]["id"] == "killed"
    assert e["evidence"][0] == {"file": "training.log", "line": 1, "text": "Killed"}
    data = json.loads(rr.read_text())
    assert data["experiments"] == [{"mode": "default", "repo": "examples", "model": "mnist",
                                    "hyperparameters": {"epochs": 2, "batch_size": 64},
                                    "note": "rerun of examples_mnist_001 (killed)"}]
    assert any(str(rr) in f for f in e["fix"]) or e["fix"]


def test_worker_processes_give_the_same_report(tmp_path):
    for r in range(3):
        run = tmp_path / f"run_2026010{r}_000000"
        for k in range(4):
            ok = (r + k) % 3 != 0
            _exp(run, f"examples_mnist_{r}{k:02d}", log=("Test Accuracy: 92%\n" if ok else
                 "Traceback (most recent call last):\n  File \"m.py\", line 2, in <module>\n"
                 "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB\n"),
                 training_success=ok, performance_metrics={"test_accuracy": 92.0} if ok else {})
    one = explain_path(str(tmp_path), jobs=1)
    two = explain_path(str(tmp_path), jobs=2)
    assert one.explanations == two.explanations and one.runs == two.runs
    assert one.causes == {"cuda.oom": 4}


def test_odd_records_never_crash_the_batch(tmp_path):
    """Records whose values (at any depth) have the wrong type, and odd logs: every folder still
    gets an explanation from the rules (not from the last-resort guard), and the batch goes on."""
    import random

    from doctor.explain.render import render_markdown, rerun_settings, to_json

    base = {"experiment_id": "x", "timestamp": "2026-01-07T01:52:45", "repository": "Person_reID_baseline_pytorch",
            "model": "hrnet18", "hyperparameters": {"epochs": 2, "batch_size": 8}, "duration_seconds": 12.0,
            "energy_metrics": {"gpu_util_max_percent": 0, "gpu_power_min_watts": 150}, "performance_metrics": {},
            "training_success": False, "retries": 2, "error_message": "Error pattern found: CUDA out of memory",
            "status": "failed", "exit_code": 1,
            "attempts": [{"attempt": 1, "log": "training.log", "exit_code": 1, "signal": None, "timed_out": False,
                          "duration_seconds": 3, "started": "x", "retry_reason": "network"}],
            "error_excerpt": ["KeyError: 'repo'"],
            "preflight": {"verdict": "blocked", "blocked_by": ["cache.hub.missing"], "hf_cache": "/root/x",
                          "findings": [{"id": "cache.hub.missing", "title": "t", "fix": ["a"]}],
                          "needs": [{"kind": "timm", "key": "timm:x", "status": "missing", "path": None,
                                     "found_elsewhere": ["/home/u/.cache/huggingface/hub"]}]},
            "launch": {"how": "sudo", "home": "/root", "invoking_home": "/home/u", "env_set": {"HF_TOKEN": "***"}},
            "gpu_foreign_processes": [{"pid": 1}], "warnings": ["trained nothing?"]}
    odd = [None, 3, -1.5, "text", "", [], [1, "a", None], {}, {"a": [None]}, True, 0]

    def mutate(o, rnd):
        if isinstance(o, dict):
            return {k: (rnd.choice(odd) if rnd.random() < 0.25 else mutate(v, rnd) if rnd.random() < 0.5 else v)
                    for k, v in o.items()}
        if isinstance(o, list):
            return [mutate(x, rnd) if rnd.random() < 0.7 else rnd.choice(odd) for x in o]
        return o

    logs = ["Traceback (most recent call last):\n  File \"a.py\", line 1\nRuntimeError: CUDA out of memory.\n",
            "Killed\n", "", "\x00\xff garbage\n", "Traceback (most recent call last):\n"]
    rnd = random.Random(7)
    for i in range(240):
        rec = mutate(base, rnd)
        if rnd.random() < 0.3:
            rec = {"experiment_id": "p", "mode": "parallel", "foreground": mutate(base, rnd),
                   "background": rnd.choice([{"repository": "e", "model": "m", "hyperparameters": rnd.choice(odd)},
                                             None, 3, {}])}
        d = tmp_path / f"run_{i % 5}" / f"e{i:03d}"
        d.mkdir(parents=True)
        (d / "experiment.json").write_text(json.dumps(rec))
        if rnd.random() < 0.7:
            (d / "training.log").write_text(rnd.choice(logs))
        if rnd.random() < 0.3:
            (d / "terminal_output.txt").write_text("STDOUT:\n" + rnd.choice(logs) + "exit code: 0\n")
    r = explain_path(str(tmp_path), jobs=1)
    assert len(r.explanations) == 240
    crashed = [(e.experiment_id, e.chain) for e in r.explanations
               if e.evidence and "could not be explained" in e.evidence[0].text]
    assert not crashed
    json.dumps(to_json(r))
    json.dumps(rerun_settings(r))
    render_markdown(r, "rerun.json")


def test_fixes_name_the_path_from_the_message(tmp_path):
    run = tmp_path / "run_1"
    data = tmp_path / "data"
    data.mkdir()
    tb = 'Traceback (most recent call last):\n  File "train.py", line 9, in <module>\n'
    _exp(run, "nodata", log=tb + f"FileNotFoundError: [Errno 2] No such file or directory: '{data}/mnist.npz'\n",
         training_success=False)
    _exp(run, "denied", log=tb + f"PermissionError: [Errno 13] Permission denied: '{data}'\n",
         training_success=False)
    _exp(run, "shell", log="epoch 1\nbash: /srv/out/log.txt: Permission denied\n", training_success=False)
    by_id = {e.experiment_id: e for e in explain_path(str(run)).explanations}
    assert by_id["nodata"].cause_id == "data.missing" and f"ls -l {data}/mnist.npz" in by_id["nodata"].fix
    assert by_id["denied"].cause_id == "permission.denied"
    assert f"ls -ld {data}" in by_id["denied"].fix  # a folder: itself, not its parent
    assert by_id["shell"].cause_id == "permission.denied" and "ls -ld /srv/out" in by_id["shell"].fix


def _slurm_record(run: Path, eid: str, *, state: str, attempts: list, log: str = None) -> Path:
    """A record as the Slurm backend leaves it: runner.results.experiment_record with Slurm's accounting
    (sacct) under `slurm`, as runner/backends/slurm_batch.py writes it for a job with or without its own record."""
    from types import SimpleNamespace

    from runner.backends.slurm_batch import ENDED_STATES
    from runner.results import experiment_record

    side = SimpleNamespace(repo="examples", model="mnist", hyperparameters={"epochs": 2})
    job = SimpleNamespace(id=eid, foreground=side, background=None, experiment=SimpleNamespace(mode="default"))
    why = ENDED_STATES.get(state, "the job was killed by signal 9 (SIGKILL)").format(limit=" (--time 00:10:00)",
                                                                                  node="n1")
    info = {"job_id": f"{eid}_0", "state": state, "node": "n1", "exit_code": "0:15", "step_signal": None,
            "elapsed": "00:10:02", "log": ""}
    rec = experiment_record(job=job, status="failed", timestamp="2026-01-07T01:52:45", duration=602.0,
                            exit_code=None, attempts=attempts, metrics={},
                            error_message=f"{why} on node n1 (Slurm job {eid}_0)", error_excerpt=[],
                            preflight={"verdict": "pass", "blocked_by": []}, launch={}, extra={"slurm": info})
    d = run / eid
    d.mkdir(parents=True)
    (d / "experiment.json").write_text(json.dumps(rec, indent=2))
    if log is not None:
        (d / "training.log").write_text(log)
    return d


def test_a_slurm_job_ended_at_its_time_limit_is_a_timeout(tmp_path, capsys):
    run = tmp_path / "run_1"
    _slurm_record(run, "lost", state="TIMEOUT", attempts=[])  # the job wrote no record of its own
    term = {"attempt": 1, "log": "training.log", "started": "2026-01-07T01:52:45", "duration_seconds": 598.0,
            "exit_code": None, "signal": 15, "timed_out": False, "retry_reason": None}
    _slurm_record(run, "own", state="TIMEOUT", attempts=[term], log="epoch 1 loss 0.5\nepoch 2 loss 0.4\n")
    _slurm_record(run, "oom", state="OUT_OF_MEMORY", attempts=[])
    assert main([str(run), "--json"]) == 1
    got = {e["experiment_id"]: e for e in json.loads(capsys.readouterr().out)["experiments"]}
    assert got["lost"]["cause"]["id"] == "timeout" and got["own"]["cause"]["id"] == "timeout"
    assert any("TIMEOUT" in ev["text"] for ev in got["lost"]["evidence"])
    assert got["oom"]["cause"]["id"] != "timeout"
