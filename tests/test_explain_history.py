"""`mutation-doctor explain` on histories shaped like the user's: result folders rebuilt from their
experiment history (../shared/corpus/user-project/data/raw_data.csv, 1,225 runs recorded by
mutation.py, none with a log), plus the VulBERTa_cnn runs that really trained nothing (3 s,
"CNN training not yet implemented"), and a larger history drawn from the same rows.

Precision matters as much as recall: a run that did real work but has no metrics is a success
whose metrics were not extracted, never a "false success"; no failure becomes a success.
"""
from __future__ import annotations

import csv
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from doctor.explain import explain_path
from doctor.explain.render import to_json

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
RAW = CORPUS / "user-project" / "data" / "raw_data.csv"
ENERGY = {"cpu_pkg_joules": "cpu_energy_pkg_joules", "cpu_ram_joules": "cpu_energy_ram_joules",
          "cpu_total_joules": "cpu_energy_total_joules", "gpu_avg_watts": "gpu_power_avg_watts",
          "gpu_max_watts": "gpu_power_max_watts", "gpu_min_watts": "gpu_power_min_watts",
          "gpu_total_joules": "gpu_energy_total_joules", "gpu_temp_avg_celsius": "gpu_temp_avg_celsius",
          "gpu_temp_max_celsius": "gpu_temp_max_celsius", "gpu_util_avg_percent": "gpu_util_avg_percent",
          "gpu_util_max_percent": "gpu_util_max_percent"}


def _num(v):
    try:
        return float(v) if v not in ("", None) else None
    except ValueError:
        return None


def _record(row: dict, eid: str) -> dict:
    """experiment.json as mutation.py writes it, from one history row."""
    par = row.get("mode") == "parallel"
    p = "fg_" if par else ""
    hyper = {k[len(p) + 11:]: _num(v) for k, v in row.items() if k.startswith(p + "hyperparam_") and v}
    perf = {k[len(p) + 5:]: _num(v) for k, v in row.items() if k.startswith(p + "perf_") and v}
    energy = {ENERGY[k[len(p) + 7:]]: _num(v) for k, v in row.items()
              if k.startswith(p + "energy_") and k[len(p) + 7:] in ENERGY and v}
    ok = (row.get(p + "training_success") or row.get("training_success")) == "True"
    body = {"repository": row.get(p + "repository") or row["repository"], "model": row.get(p + "model") or row["model"],
            "hyperparameters": hyper, "duration_seconds": _num(row.get(p + "duration_seconds")),
            "energy_metrics": energy, "performance_metrics": perf, "training_success": ok,
            "retries": int(_num(row.get(p + "retries")) or 0),
            "error_message": "Training completed successfully" if ok else "Error pattern found: Training.*FAILED"}
    if body["duration_seconds"] is None:
        del body["duration_seconds"]
    rec = {"experiment_id": eid, "timestamp": row["timestamp"]}
    if par:
        rec.update(mode="parallel", foreground=body, background={"repository": "examples", "model": "mnist",
                                                                 "hyperparameters": {}})
    else:
        rec.update(body)
    return rec


CNN = {"repository": "VulBERTa", "model": "cnn", "hyperparameters": {"epochs": 10, "learning_rate": 3e-05},
       "energy_metrics": {"gpu_util_avg_percent": 9.3, "gpu_util_max_percent": 13.0, "gpu_energy_total_joules": 252.6},
       "performance_metrics": {}, "training_success": True, "retries": 0, "error_message": "Training completed successfully"}


def build_history(root: Path, rows, cnn: int, seed: int = 1) -> dict:
    """Result folders for `rows` (run folder per day) plus `cnn` VulBERTa_cnn runs; returns the truth
    per folder: (training_success, has metrics, real work, is cnn)."""
    rng = random.Random(seed)
    truth = {}
    for n, row in enumerate(rows):
        rec = _record(row, "")
        day = row["timestamp"][:10].replace("-", "")
        body = rec.get("foreground", rec)
        eid = f"{body['repository']}_{body['model']}_{n:04d}" + ("_parallel" if "foreground" in rec else "")
        rec["experiment_id"] = eid
        d = root / f"run_{day}_000000" / eid
        d.mkdir(parents=True)
        (d / "experiment.json").write_text(json.dumps(rec, indent=2))
        e = body["energy_metrics"]
        real = (body.get("duration_seconds") or 0) >= 60 or (
            "foreground" not in rec and ((e.get("gpu_util_avg_percent") or 0) >= 10
                                         or (e.get("gpu_energy_total_joules") or 0) >= 1000))
        truth[str(d)] = (body["training_success"], bool(body["performance_metrics"]), real, False)
    for n in range(cnn):
        d = root / "run_20251210_224430" / f"VulBERTa_cnn_{n:03d}_parallel"
        d.mkdir(parents=True)
        fg = dict(CNN, duration_seconds=round(2.8 + rng.random(), 3))
        rec = {"experiment_id": d.name, "timestamp": "2025-12-10T22:46:10", "mode": "parallel", "foreground": fg,
               "background": {"repository": "examples", "model": "mnist", "hyperparameters": {}}}
        (d / "experiment.json").write_text(json.dumps(rec, indent=2))
        truth[str(d)] = (True, False, False, True)
    return truth


def _rows():
    if not RAW.is_file():
        pytest.skip(f"history not available at {RAW}")
    with RAW.open(newline="") as f:
        return list(csv.DictReader(f))


def _check(report, truth):
    got = {e.path: e for e in report.explanations}
    assert len(got) == len(truth)
    for path, (ok, metrics, real, cnn) in truth.items():
        e = got[path]
        if not ok:
            assert e.status == "failed", (path, e.status)  # no failure becomes a success
        elif cnn:
            assert (e.status, e.cause_id) == ("suspicious", "false-success"), (path, e.chain)
        elif not metrics and real:
            assert (e.status, e.cause_id) == ("succeeded", "metrics.not-extracted"), (path, e.status, e.chain)
            assert e.cause.confidence <= 0.5  # judged from the record alone
        elif metrics:
            assert e.status in ("succeeded", "suspicious"), path
    return Counter((e.status, e.cause_id) for e in report.explanations)


def test_the_users_history_is_explained_with_precision(tmp_path):
    rows = _rows()
    truth = build_history(tmp_path / "results", rows, cnn=42)
    report = explain_path(str(tmp_path / "results"))
    counts = _check(report, truth)
    assert counts[("suspicious", "false-success")] == 42  # the VulBERTa_cnn runs, and only they
    not_extracted = sum(1 for ok, m, real, cnn in truth.values() if ok and not m and not cnn)
    assert counts[("succeeded", "metrics.not-extracted")] == not_extracted
    e = next(x for x in report.explanations if x.cause_id == "metrics.not-extracted" and x.repo == "VulBERTa")
    text = " ".join(e.chain)
    assert "did real work" in text and "matched nothing" in text and "No log was kept" in text
    j = to_json(report)
    assert j["precision"] == {"from_logs": 0, "from_record": len(truth)}


def test_a_larger_history_of_the_same_shape(tmp_path):
    rows = _rows()
    rng = random.Random(7)
    drawn = [dict(r, timestamp=f"2026-0{1 + i % 9}-{10 + i % 18}T00:00:00") for i, r in
             enumerate(rng.choice(rows) for _ in range(3000))]
    truth = build_history(tmp_path / "results", drawn, cnn=120, seed=3)
    counts = _check(explain_path(str(tmp_path / "results")), truth)
    assert counts[("suspicious", "false-success")] == 120
