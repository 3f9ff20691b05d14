"""Deduplication against history: the key, the history files, the draws and the doctor's warning."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.dedup import (HistoryError, combo_key, historical_csvs, load_history, read_history_csv, read_results,
                        run_mode)
from core.plan import load_plan
from core.registry import load_registry
from runner.expand import expand_with_stats

ROOT = Path(__file__).resolve().parents[1]
HP = {"epochs": {"flag": "--epochs", "type": "int", "default": 3, "range": [1, 6]},
      "lr": {"flag": "--lr", "type": "float", "default": 0.1, "range": [0.01, 1.0], "distribution": "log_uniform"}}
COLUMNS = ["experiment_id", "timestamp", "repository", "model", "hyperparam_epochs", "hyperparam_lr",
           "fg_repository", "fg_model", "fg_hyperparam_epochs", "fg_hyperparam_lr"]


def write_csv(path, rows, columns=COLUMNS):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow(r)


def project(tmp_path, experiments, **top):
    (tmp_path / "mutation").mkdir(exist_ok=True)
    (tmp_path / "repos" / "r").mkdir(parents=True, exist_ok=True)
    (tmp_path / "repos" / "r" / "train.sh").write_text("#!/bin/bash\ntouch ran\n")
    (tmp_path / "repos" / "r" / "train.sh").chmod(0o755)
    reg = {"models": {"r": {"path": "repos/r", "train_script": "./train.sh", "models": ["m", "n"], "model_flag": "-n",
                            "supported_hyperparams": HP}}}
    (tmp_path / "mutation" / "models_config.json").write_text(json.dumps(reg))
    (tmp_path / "settings").mkdir(exist_ok=True)
    (tmp_path / "settings" / "s.json").write_text(json.dumps(dict(top, experiments=experiments)))
    registry = load_registry(str(tmp_path / "mutation" / "models_config.json"), str(tmp_path))
    return load_plan(str(tmp_path / "settings" / "s.json"), registry), registry


# -- the key and the files ---------------------------------------------------------------------------
def test_key_is_typed_sorted_and_carries_the_mode():
    kinds = {"epochs": "int", "lr": "float"}
    a = combo_key({"lr": 0.1, "epochs": 10}, kinds, "nonparallel")
    assert a == (("__mode__", "nonparallel"), ("epochs", "10"), ("lr", "0.100000"))
    assert combo_key({"epochs": "10.0", "lr": "0.1000001"}, kinds, "nonparallel") == a  # as a CSV gives them back
    assert combo_key({"lr": 0.1, "epochs": 10}, kinds, "parallel") != a
    assert run_mode("x_m_003_parallel") == "parallel" and run_mode("parallel_x_003") == "nonparallel"


def test_history_csv_rows_plain_parallel_and_blocked(tmp_path):
    path = tmp_path / "raw.csv"
    write_csv(path, [
        {"experiment_id": "r_m_001", "repository": "r", "model": "m", "hyperparam_epochs": "4", "hyperparam_lr": ""},
        {"experiment_id": "r_m_002_parallel", "fg_repository": "r", "fg_model": "m", "fg_hyperparam_epochs": "5.0"},
        {"experiment_id": "r_m_003", "repository": "r", "model": "m"},  # no value: not a combination
    ], COLUMNS)
    runs = read_history_csv(str(path))
    assert [(r.repo, r.model, r.mode, dict(r.values)) for r in runs] == [
        ("r", "m", "nonparallel", {"epochs": "4"}), ("r", "m", "parallel", {"epochs": "5.0"})]
    ours = tmp_path / "ours.csv"
    write_csv(ours, [{"experiment_id": "r_m_001", "repository": "r", "model": "m", "hyperparam_epochs": "2",
                      "status": "blocked"}], ["experiment_id", "repository", "model", "hyperparam_epochs", "status"])
    assert read_history_csv(str(ours)) == []  # a blocked record never ran


@pytest.mark.parametrize("content, needle", [
    (None, "file not found"), (b"\xff\xfe\x00bad", "cannot read"), (b"a,b\n1,2\n", "not a results CSV")])
def test_an_unusable_history_csv_is_one_error_with_its_path(tmp_path, content, needle):
    path = tmp_path / "h.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(HistoryError) as e:
        read_history_csv(str(path))
    assert str(e.value).startswith(str(path)) and needle in str(e.value)


def test_results_folders_give_their_runs_from_summary_or_experiment_json(tmp_path):
    write_csv(tmp_path / "run_20260101_000000" / "summary.csv",
              [{"experiment_id": "r_m_001", "repository": "r", "model": "m", "hyperparam_epochs": "2"}])
    crashed = tmp_path / "run_20260102_000000"  # killed before its summary: experiment.json only
    (crashed / "r_m_001_parallel").mkdir(parents=True)
    (crashed / "r_m_001_parallel" / "experiment.json").write_text(json.dumps(
        {"experiment_id": "r_m_001_parallel", "foreground": {"repository": "r", "model": "m",
                                                             "hyperparameters": {"epochs": 5}}}))
    (crashed / "r_m_002").mkdir()
    (crashed / "r_m_002" / "experiment.json").write_text("{half written")
    runs = read_results(str(tmp_path))
    assert [(r.mode, dict(r.values)) for r in runs] == [("nonparallel", {"epochs": "2"}), ("parallel", {"epochs": 5})]


def test_relative_historical_csvs_start_at_the_project_root(tmp_path):
    top = {"use_deduplication": True, "historical_csvs": ["data/raw.csv", "/abs/x.csv"]}
    assert historical_csvs(top, str(tmp_path)) == [("data/raw.csv", str(tmp_path / "data" / "raw.csv")),
                                                  ("/abs/x.csv", "/abs/x.csv")]
    assert historical_csvs(dict(top, use_deduplication=False), str(tmp_path)) == []


# -- the draws ---------------------------------------------------------------------------------------
def test_draws_skip_past_runs_of_the_same_model_and_mode_only(tmp_path):
    # epochs in [1, 6], default 3: history has 1, 2 and 4 for r/m (one as "5.0" of another mode,
    # one of another model): the two new values left for r/m nonparallel are 5 and 6
    write_csv(tmp_path / "data" / "raw.csv", [
        {"experiment_id": "r_m_001", "repository": "r", "model": "m", "hyperparam_epochs": "1"},
        {"experiment_id": "r_m_002", "repository": "r", "model": "m", "hyperparam_epochs": "2.0", "hyperparam_lr": "0.5"},
        {"experiment_id": "r_m_003", "repository": "r", "model": "m", "hyperparam_epochs": "4"},
        {"experiment_id": "r_m_004_parallel", "fg_repository": "r", "fg_model": "m", "fg_hyperparam_epochs": "5"},
        {"experiment_id": "r_n_005", "repository": "r", "model": "n", "hyperparam_epochs": "6"}])
    entry = {"repo": "r", "model": "m", "mutate": ["epochs"], "runs_per_config": 2}
    plan, reg = project(tmp_path, [entry], use_deduplication=True, historical_csvs=["data/raw.csv"])
    history = load_history(plan.raw_top, reg.project_root)
    for seed in range(5):
        jobs, stats = expand_with_stats(plan.experiments, reg, seed, history)
        assert sorted(j.foreground.hyperparameters["epochs"] for j in jobs) == [5, 6]
        assert not stats.short and stats.redrawn_history > 0 and stats.history_runs == 5
    off, _ = project(tmp_path, [dict(entry, runs_per_config=4)])  # use_deduplication off: history is not read
    jobs, stats = expand_with_stats(off.experiments, reg, 0, load_history(off.raw_top, reg.project_root))
    assert stats.history is None and stats.redrawn_history == 0
    assert any(j.foreground.hyperparameters["epochs"] in (1, 2, 4) for j in jobs)


def test_earlier_results_of_the_project_count_as_history(tmp_path):
    write_csv(tmp_path / "results" / "run_20260101_000000" / "summary.csv",
              [{"experiment_id": f"r_m_00{v}", "repository": "r", "model": "m", "hyperparam_epochs": str(v)}
               for v in (1, 2, 4, 5)])
    plan, reg = project(tmp_path, [{"repo": "r", "model": "m", "mutate": ["epochs"]}], use_deduplication=True)
    history = load_history(plan.raw_top, reg.project_root, [str(tmp_path / "results")])
    jobs, stats = expand_with_stats(plan.experiments, reg, 1, history)
    assert jobs[0].foreground.hyperparameters == {"epochs": 6}
    assert stats.history[0].runs == 4 and "history had them" in stats.lines()[0]


def _history_keys(path, repo, model, names, kinds):
    """The corpus history by key, read here with the csv module alone."""
    keys = set()
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            p = "" if row["repository"] else "fg_"
            if (row[p + "repository"], row[p + "model"]) != (repo, model):
                continue
            values = {n: row[f"{p}hyperparam_{n}"] for n in names if row.get(f"{p}hyperparam_{n}")}
            if values:
                keys.add(combo_key(values, kinds, "parallel" if row["experiment_id"].endswith("_parallel")
                                   else "nonparallel"))
    return keys


def test_corpus_dedup_file_draws_nothing_already_in_raw_data_and_is_reproducible(corpus, tmp_path):
    src = corpus / "user-project"
    name = "stage11_parallel_hrnet18.json"
    if not (src / "settings" / name).is_file() or not (src / "data" / "raw_data.csv").is_file():
        pytest.skip("corpus settings or raw_data.csv not there")
    for sub in ("settings", "mutation", "data"):
        shutil.copytree(src / sub, tmp_path / sub)
    reg = load_registry(str(tmp_path / "mutation" / "models_config.json"), str(tmp_path))
    plan = load_plan(str(tmp_path / "settings" / name), reg)
    assert plan.raw_top["historical_csvs"] == ["data/raw_data.csv"]
    history = load_history(plan.raw_top, reg.project_root)
    jobs, stats = expand_with_stats(plan.experiments, reg, 42, history)
    again, _ = expand_with_stats(plan.experiments, reg, 42, load_history(plan.raw_top, reg.project_root))
    assert [j.to_dict() for j in jobs] == [j.to_dict() for j in again]
    assert not stats.short and stats.redrawn_history > 0  # history did push some draws away
    checked = 0
    for job in jobs:
        side = job.experiment.foreground
        if not side.mutate:
            continue
        kinds = {n: reg.repos[side.repo].hyperparams[n].type for n in side.mutate}
        past = _history_keys(tmp_path / "data" / "raw_data.csv", side.repo, side.model, side.mutate, kinds)
        mode = "parallel" if job.id.endswith("_parallel") else "nonparallel"
        assert combo_key(job.foreground.hyperparameters, kinds, mode) not in past, job.id
        checked += 1
    assert checked == len(jobs) == 20


# -- the doctor --------------------------------------------------------------------------------------
def _doctor_history(tmp_path, project_root, rc=0):
    p = subprocess.run([sys.executable, "-m", "doctor.cli", "-ec", str(tmp_path / "settings" / "s.json"),
                        "--models-config", str(tmp_path / "mutation" / "models_config.json"),
                        "--project-root", str(project_root), "--only", "settings", "--json"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)})
    assert p.returncode == rc, p.stdout + p.stderr  # the history warnings alone block nothing
    return [f for f in json.loads(p.stdout)["findings"] if f["id"].startswith("settings.history")]


def test_doctor_warns_once_per_missing_or_unreadable_history_csv_with_its_path(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "bad.csv").write_bytes(b"\xff\xfe\x00")
    write_csv(tmp_path / "data" / "ok.csv", [])
    project(tmp_path, [{"repo": "r", "model": "m", "mutate": ["epochs"]}], use_deduplication=True,
            historical_csvs=["data/ok.csv", "data/missing.csv", "data/bad.csv"])
    missing, bad = _doctor_history(tmp_path, tmp_path)
    assert (missing["id"], bad["id"]) == ("settings.history-missing", "settings.history-unreadable")
    assert missing["status"] == bad["status"] == "warn"
    assert str(tmp_path / "data" / "missing.csv") in missing["title"]
    assert str(tmp_path / "data" / "bad.csv") in bad["title"] and "cannot read" in bad["detail"]
    # the doctor started from another project root: the CSVs are where mutation.py's root would be
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = _doctor_history(tmp_path, elsewhere, rc=1)  # the repo folder is not there either
    assert [f["id"] for f in found] == ["settings.history-missing"] * 3
    assert found[0]["fix"] == [f"mutation-doctor --project-root {tmp_path} -ec {tmp_path / 'settings' / 's.json'}"]

