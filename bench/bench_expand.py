"""Benchmark plan expansion with deduplication: the corpus's dedup settings files against their
raw_data.csv, and a synthetic history of many past runs. Prints one JSON object.

    python bench/bench_expand.py            # corpus + 200,000 synthetic past runs
    python bench/bench_expand.py --quick    # corpus + 20,000 synthetic past runs

`corpus`: every settings file with `use_deduplication` (copied to a temp project): seconds to read
the history and to draw, candidates drawn, drawn again because history had them, experiments left
without a new combination. `synthetic`: one mutation entry of 50 runs against N past runs of the same
model, whose values cover about 63 % of the range drawn from (seconds to read the CSV, to draw).
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.dedup import load_history  # noqa: E402
from core.plan import load_plan  # noqa: E402
from core.registry import load_registry  # noqa: E402
from runner.expand import expand_with_stats  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus" / "user-project"


def bench_corpus(base: Path) -> dict:
    if not (CORPUS / "data" / "raw_data.csv").is_file():
        return {"skipped": f"no corpus at {CORPUS}"}
    for sub in ("settings", "mutation", "data"):
        shutil.copytree(CORPUS / sub, base / sub)
    reg = load_registry(str(base / "mutation" / "models_config.json"), str(base))
    out = {"files": 0, "experiments": 0, "drawn": 0, "redrawn_history": 0, "short": 0, "read_s": 0.0, "draw_s": 0.0}
    for path in sorted((base / "settings").rglob("*.json")):
        plan = load_plan(str(path), reg)
        t0 = time.perf_counter()
        history = load_history(plan.raw_top, reg.project_root)
        t1 = time.perf_counter()
        if history is None:
            continue
        jobs, stats = expand_with_stats(plan.experiments, reg, 1, history)
        out["read_s"] += t1 - t0
        out["draw_s"] += time.perf_counter() - t1
        out["files"] += 1
        out["experiments"] += len(jobs)
        out["drawn"] += stats.drawn
        out["redrawn_history"] += stats.redrawn_history
        out["short"] += len(stats.short)
    out["read_s"], out["draw_s"] = round(out["read_s"], 3), round(out["draw_s"], 3)
    return out


def bench_synthetic(base: Path, rows: int) -> dict:
    (base / "mutation").mkdir(parents=True)
    hp = {"epochs": {"flag": "--epochs", "type": "int", "default": 10, "range": [1, rows]},
          "lr": {"flag": "--lr", "type": "float", "default": 0.01, "range": [1e-4, 1.0], "distribution": "log_uniform"}}
    reg = {"models": {"r": {"path": "r", "train_script": "./train.sh", "models": ["m"], "supported_hyperparams": hp}}}
    (base / "mutation" / "models_config.json").write_text(json.dumps(reg))
    rng = random.Random(0)
    with open(base / "history.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["experiment_id", "repository", "model", "hyperparam_epochs", "hyperparam_lr"])
        for i in range(rows):
            w.writerow([f"r_m_{i:06d}", "r", "m", rng.randint(1, rows), "%.6f" % rng.uniform(1e-4, 1.0)])
    (base / "s.json").write_text(json.dumps({"use_deduplication": True, "historical_csvs": ["history.csv"],
                                             "experiments": [{"repo": "r", "model": "m", "mutate": ["epochs"],
                                                              "runs_per_config": 50}]}))
    registry = load_registry(str(base / "mutation" / "models_config.json"), str(base))
    plan = load_plan(str(base / "s.json"), registry)
    t0 = time.perf_counter()
    history = load_history(plan.raw_top, registry.project_root)
    t1 = time.perf_counter()
    jobs, stats = expand_with_stats(plan.experiments, registry, 1, history)
    t2 = time.perf_counter()
    return {"past_runs": rows, "read_s": round(t1 - t0, 3), "draw_s": round(t2 - t1, 3), "drawn": stats.drawn,
            "redrawn_history": stats.redrawn_history, "short": len(stats.short)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = {"bench": "expand", "corpus": bench_corpus(Path(tmp) / "corpus"),
                  "synthetic": bench_synthetic(Path(tmp) / "synthetic", 20_000 if args.quick else 200_000)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
