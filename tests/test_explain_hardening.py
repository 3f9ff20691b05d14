"""`mutation-doctor explain` on hostile result folders: log paths that leave the folder, FIFOs, secrets
in logs, registry patterns that are not valid regular expressions."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.secrets import mask_text
from doctor.explain import explain_path

PY = sys.executable
ROOT = Path(__file__).resolve().parents[1]
VICTIM = "root:$6$victimhash-7f3a:19000:0:99999:7:::"
TB = 'Traceback (most recent call last):\n  File "train.py", line 3, in <module>\n    main()\n'


def _runner_folder(run: Path, eid: str, log: str, **extra) -> Path:
    d = run / eid
    d.mkdir(parents=True)
    attempt = {"attempt": 1, "log": log, "started": "2026-03-01T01:02:03", "duration_seconds": 5.0,
               "exit_code": 1, "signal": None, "timed_out": False, "retry_reason": None}
    rec = {"experiment_id": eid, "timestamp": "2026-03-01T01:02:03", "repository": "r", "model": "m",
           "hyperparameters": {}, "duration_seconds": 5.0, "energy_metrics": {}, "performance_metrics": {},
           "training_success": False, "retries": 0, "error_message": "", "status": "failed", "exit_code": 1,
           "attempts": [attempt], "error_excerpt": []}
    rec.update(extra)
    (d / "experiment.json").write_text(json.dumps(rec))
    return d


def _explain_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "doctor.explain", *args], cwd=str(ROOT), capture_output=True, text=True,
                          timeout=timeout)


def test_logs_named_outside_the_experiment_folder_are_never_read(tmp_path):
    victim = tmp_path / "shadow"
    victim.write_text(TB + f"KeyError: '{VICTIM}'\n")
    run = tmp_path / "results" / "run_20260301_010203"
    _runner_folder(run, "absolute", str(victim))
    _runner_folder(run, "dotdot", "../../../shadow")
    d = _runner_folder(run, "link", "training.log")
    (d / "training.log").symlink_to(victim)
    d = _runner_folder(run, "dirlink", "logs/training.log")
    (d / "logs").symlink_to(tmp_path)
    (tmp_path / "training.log").write_text(TB + f"KeyError: '{VICTIM}'\n")
    p = _explain_cli(str(tmp_path / "results"), "--json")
    assert p.returncode == 1, p.stderr
    assert "victimhash" not in p.stdout and "victimhash" not in p.stderr
    data = json.loads(p.stdout)
    assert len(data["experiments"]) == 4
    for x in data["experiments"]:
        assert not any(str(tmp_path / "shadow") in f or str(tmp_path / "training.log") in f for f in x["fix"]), x["fix"]
        assert x["cause"]["confidence"] <= 0.5  # nothing was read: no log-based verdict


def test_a_fifo_log_does_not_hang_explain(tmp_path):
    run = tmp_path / "results" / "run_20260301_010203"
    d = _runner_folder(run, "fifo", "training.log")
    os.mkfifo(d / "training.log")
    os.mkfifo(d / "terminal_output.txt")
    user = run / "user_fifo"
    user.mkdir()
    os.mkfifo(user / "training.log")
    os.mkfifo(user / "terminal_output.txt")
    (user / "experiment.json").write_text(json.dumps({"experiment_id": "user_fifo", "repository": "r", "model": "m",
                                                      "training_success": True, "performance_metrics": {}}))
    p = _explain_cli(str(tmp_path / "results"), "--json", timeout=30)
    assert p.returncode == 1, p.stderr
    assert {x["experiment_id"] for x in json.loads(p.stdout)["experiments"]} == {"fifo", "user_fifo"}


SECRETS = {"HF_TOKEN": "hf_" + "AbCdEfGhIjKlMnOpQrStUv", "PROXY": "http://alice:s3cretpw@proxy.example:3128"}


def test_secrets_in_logs_are_masked_in_every_output(tmp_path):
    run = tmp_path / "results" / "run_20260301_010203"
    line = (f"httpx.ProxyError: 407 from {SECRETS['PROXY']} with token {SECRETS['HF_TOKEN']} "
            f"AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY")
    d = _runner_folder(run, "secret", "training.log", hyperparameters={"note": SECRETS["HF_TOKEN"]})
    (d / "training.log").write_text("Loading\n" + TB + line + "\n")
    md, rerun = tmp_path / "report.md", tmp_path / "rerun.json"
    outs = [_explain_cli(str(tmp_path / "results"), "--json").stdout,
            _explain_cli(str(tmp_path / "results"), "-v", "--markdown", str(md), "--rerun", str(rerun)).stdout]
    outs += [md.read_text(), rerun.read_text()]
    assert "407" in outs[0] and "proxy.example" in outs[1]  # the evidence is there, masked
    for out in outs:
        assert SECRETS["HF_TOKEN"] not in out and "s3cretpw" not in out
        if mask_text("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY") != \
                "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY":  # masked by name in core.secrets
            assert "wJalrXUtnFEMIK7MDENG" not in out


def _registry(tmp_path: Path, patterns: dict) -> str:
    p = tmp_path / "models_config.json"
    p.write_text(json.dumps({"models": {"r": {"path": "repos/r", "train_script": "./train.sh", "models": ["m"],
                                              "performance_metrics": {"log_patterns": patterns}}}}))
    return str(p)


def _user_success(run: Path, eid: str, output: str, **extra) -> Path:
    d = run / eid
    d.mkdir(parents=True)
    (d / "terminal_output.txt").write_text("STDOUT:\n" + output + "STDERR:\n(empty)\n")
    rec = {"experiment_id": eid, "repository": "r", "model": "m", "hyperparameters": {"epochs": 5},
           "duration_seconds": 420.0, "energy_metrics": {"gpu_util_avg_percent": 80.0}, "performance_metrics": {},
           "training_success": True, "retries": 0, "error_message": "Training completed successfully"}
    rec.update(extra)
    (d / "experiment.json").write_text(json.dumps(rec))
    return d


def test_an_invalid_log_pattern_is_named_not_taken_for_a_run_that_trained_nothing(tmp_path):
    run = tmp_path / "results" / "run_20260301_010203"
    _user_success(run, "r_m_001", "epoch 5\nAccuracy: 0.91\n")
    report = explain_path(str(tmp_path / "results"), registry=_registry(tmp_path, {"accuracy": "Accuracy: ([0-9.]+"}))
    e = report.explanations[0]
    assert (e.status, e.cause_id) == ("succeeded", "metrics.not-extracted")
    assert "not a valid regular expression" in " ".join(e.chain)


def test_a_valid_pattern_that_matches_nothing_is_named_with_the_lines_that_hold_the_metric(tmp_path):
    run = tmp_path / "results" / "run_20260301_010203"
    _user_success(run, "r_m_001", "epoch 5\nval acc = 0.91\n")
    report = explain_path(str(tmp_path / "results"), registry=_registry(tmp_path, {"val_acc": r"Val Acc: ([0-9.]+)"}))
    e = report.explanations[0]
    assert (e.status, e.cause_id) == ("succeeded", "metrics.not-extracted")
    assert "'Val Acc: ([0-9.]+)'" in " ".join(e.chain) and any("val acc = 0.91" in v.text for v in e.evidence)


@pytest.mark.parametrize("duration, epochs, util, log, status", [
    (3.0, 10, None, "epoch 1\n", "suspicious"),           # under a second per epoch, no comparable run
    (420.0, 10, 80.0, "epoch 10\n", "succeeded"),         # minutes of GPU work: metrics not extracted
    (20.0, 1, 0.0, "starting\n", "suspicious"),           # seconds and the GPU never used
    (420.0, 1, None, "model not yet implemented\n", "suspicious"),  # the log says so
])
def test_trained_nothing_needs_positive_evidence(tmp_path, duration, epochs, util, log, status):
    run = tmp_path / "results" / "run_20260301_010203"
    energy = {} if util is None else {"gpu_util_avg_percent": util, "gpu_util_max_percent": util}
    _user_success(run, "r_m_001", log, duration_seconds=duration, hyperparameters={"epochs": epochs},
                  energy_metrics=energy)
    e = explain_path(str(tmp_path / "results"), registry=_registry(tmp_path, {"acc": r"Acc: ([0-9.]+)"})).explanations[0]
    assert e.status == status, e.chain
    assert e.cause_id == ("false-success" if status == "suspicious" else "metrics.not-extracted")


def test_a_run_killed_at_the_round_limit_after_an_early_metric_is_a_timeout(tmp_path):
    run = tmp_path / "results" / "run_20260301_010203"
    out = "Rank@1: 0.51 mAP: 0.30\n" + "".join(f"Train Epoch: 7 [{i * 64}/60000]\tLoss: 1.2\n" for i in range(50))
    _user_success(run, "r_m_001", out, duration_seconds=3601.4, performance_metrics={"rank1": 0.51})
    _user_success(run, "r_m_002", out + "Training completed successfully\n", duration_seconds=3601.4,
                  performance_metrics={"rank1": 0.51})
    got = {e.experiment_id: e for e in explain_path(str(tmp_path / "results")).explanations}
    assert (got["r_m_001"].status, got["r_m_001"].cause_id) == ("failed", "timeout")
    assert got["r_m_002"].status == "succeeded"  # it finished: a final report after the last progress line


@pytest.mark.parametrize("util, status", [(95.0, "succeeded"), (None, "suspicious")])
def test_seconds_next_to_minutes_long_siblings_is_suspicious_unless_the_gpu_worked(tmp_path, util, status):
    run = tmp_path / "results" / "run_20260301_010203"
    for n in (1, 2):
        _user_success(run, f"r_m_00{n}", "epoch 5\nAcc: 0.9\n", duration_seconds=1200.0 + n,
                      performance_metrics={"acc": 0.9}, energy_metrics={})
    energy = {} if util is None else {"gpu_util_avg_percent": util, "gpu_util_max_percent": 100.0}
    _user_success(run, "r_m_003", "epoch 1\n", duration_seconds=20.0, hyperparameters={"epochs": 1},
                  energy_metrics=energy)
    got = {e.experiment_id: e for e in explain_path(str(tmp_path / "results"),
                                                    registry=_registry(tmp_path, {"acc": r"Acc: ([0-9.]+)"})).explanations}
    assert got["r_m_003"].status == status, got["r_m_003"].chain


def test_lookalike_lines_and_the_pattern_suggested_for_them():
    import re

    from doctor.explain.metrics import lookalikes, suggest_pattern
    lines = list(enumerate(["Rank@10: 0.97", "bitmap 3", "Rank@1:0.879454 Rank@5:0.962886 mAP:0.697153",
                            "Test Accuracy = 91.2%", "loss 0.3"]))
    got = lookalikes(lines, ["rank1", "map", "test_accuracy"])
    assert [i for i, _ in got["rank1"]] == [2] and [i for i, _ in got["map"]] == [2] and got["test_accuracy"][0][0] == 3
    for line, name, value in (("Rank@1:0.879454 Rank@5:0.96", "rank1", "0.879454"),
                              ("Test Accuracy = 91.2%", "test_accuracy", "91.2"), ("mAP:     0.697153%", "map", "0.697153")):
        assert re.search(suggest_pattern(line, name), line).group(1) == value
    assert suggest_pattern("Rank@10: 0.97", "rank1") is None
