"""Needs discovery time for five repos shaped like the user's, cold (empty memo) and warm (memo on
disk, a new process's view), printed as one JSON object.

The repos are the user's own when their public mirror is on this machine (their .py and .sh files
read into a temp folder), else generated here with the same constructs and sizes.

    .venv/bin/python bench/bench_discovery.py [--repeat N] [--generate]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.discover import SourceMemo, discover_repo  # noqa: E402
from core.registry import load_registry  # noqa: E402

MIRROR = Path("/work/.mirror/IIllIlllIl+Green-deep-learning/repo")
REPOS = ["Person_reID_baseline_pytorch", "pytorch_resnet_cifar10", "VulBERTa", "MRT-OAST",
         "bug-localization-by-dnn-and-rvsm"]
MODELS = {"Person_reID_baseline_pytorch": (["densenet121", "hrnet18", "pcb"], "-n"),
          "pytorch_resnet_cifar10": (["resnet20", "resnet32", "resnet44", "resnet56"], "-n"),
          "VulBERTa": (["mlp", "cnn"], "-n"), "MRT-OAST": (["default"], None),
          "bug-localization-by-dnn-and-rvsm": (["default"], None)}


def from_mirror(dest: Path) -> bool:
    if not MIRROR.is_dir():
        return False
    listed = subprocess.run(["git", "-C", str(MIRROR), "ls-tree", "-r", "--name-only", "HEAD", "--"]
                            + [f"repos/{r}" for r in REPOS], capture_output=True, text=True)
    if listed.returncode != 0:
        return False
    for rel in listed.stdout.split():
        if rel.endswith((".py", ".sh")):
            blob = subprocess.run(["git", "-C", str(MIRROR), "show", f"HEAD:{rel}"], capture_output=True)
            if blob.returncode == 0:
                out = dest / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(blob.stdout)
    return True


def _generated_script(i: int, models) -> str:
    branches = "\n".join(f'        "{m}") FLAG="--use_{m}" ;;' for m in models)
    return f"""#!/bin/bash
MODEL_NAME=""
DATA_DIR="./data/set{i}"
CONDA_ENV="env{i}"
PYTHON_PATH="$HOME/miniconda3/envs/$CONDA_ENV/bin/python"
while [[ $# -gt 0 ]]; do
    case $1 in
        -n) MODEL_NAME="$2"; shift 2 ;;
        *) shift ;;
    esac
done
case "$MODEL_NAME" in
{branches}
esac
cmd="$PYTHON_PATH train.py --data_dir $DATA_DIR"
eval "$cmd $FLAG"
"""


def generate(dest: Path) -> None:
    """Five repos with the user's constructs: flags -> dispatch -> classes with pretrained loads,
    plus filler modules so that each repo has about the user's number and size of files."""
    filler = "\n".join(f"def helper_{k}(x):\n    if x > {k}:\n        return x * {k}\n    return sorted([x, {k}])\n"
                       for k in range(150))
    for i, repo in enumerate(REPOS):
        models, _ = MODELS[repo]
        root = dest / "repos" / repo
        root.mkdir(parents=True)
        (root / "train.sh").write_text(_generated_script(i, models))
        args = "\n".join(f"parser.add_argument('--use_{m}', action='store_true')" for m in models)
        dispatch = "\n".join(f"{'if' if k == 0 else 'elif'} opt.use_{m}:\n    net = Net_{m}()" for k, m in enumerate(models))
        (root / "train.py").write_text("import argparse\nfrom model import *\nparser = argparse.ArgumentParser()\n"
                                       f"parser.add_argument('--data_dir', default='../data')\n{args}\n"
                                       f"opt = parser.parse_args()\n{dispatch}\n")
        classes = "\n".join(f"class Net_{m}:\n    def __init__(self):\n        self.m = timm.create_model('resnet{k}', "
                            f"pretrained=True)\n" for k, m in enumerate(models))
        (root / "model.py").write_text(f"import timm\n{classes}\n{filler}")
        for k in range(12):
            (root / f"util_{k}.py").write_text(filler)


def layout(dest: Path, generated: bool) -> str:
    if not generated and from_mirror(dest):
        source = "mirror"
    else:
        generate(dest)
        source = "generated"
    models = {r: {"path": f"repos/{r}", "train_script": "./train.sh", "models": MODELS[r][0],
                  **({"model_flag": MODELS[r][1]} if MODELS[r][1] else {})} for r in REPOS}
    (dest / "models_config.json").write_text(json.dumps({"models": models}))
    return source


def run_once(registry, memo_path: str):
    out = {}
    for name, spec in registry.repos.items():
        memo = SourceMemo(memo_path)
        t0 = time.perf_counter()
        rn = discover_repo(memo, spec, "/home/user", "/usr/bin:/bin")
        out[name] = (time.perf_counter() - t0, memo.scanned, sum(len(v) for v in rn.models.values()))
        memo.save()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--generate", action="store_true", help="generate the repos even when the mirror is present")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp)
        source = layout(dest, args.generate)
        registry = load_registry(str(dest / "models_config.json"), str(dest))
        files = {r: sum(1 for _ in (dest / "repos" / r).rglob("*.py")) for r in REPOS}
        cold, warm = {r: [] for r in REPOS}, {r: [] for r in REPOS}
        scanned, needs = {}, {}
        for k in range(args.repeat):
            memo_path = os.path.join(tmp, f"memo{k}.json")
            for r, (t, n, nn) in run_once(registry, memo_path).items():
                cold[r].append(t)
                scanned[r], needs[r] = n, nn
            for r, (t, n, _) in run_once(registry, memo_path).items():
                warm[r].append(t)
                assert n == 0, f"warm run of {r} parsed {n} files"
        result = {"bench": "discovery", "source": source, "repeat": args.repeat,
                  "repos": {r: {"python_files": files[r], "parsed_cold": scanned[r], "needs": needs[r],
                                "cold_s": round(statistics.median(cold[r]), 4),
                                "warm_s": round(statistics.median(warm[r]), 4)} for r in REPOS},
                  "total_cold_s": round(sum(statistics.median(v) for v in cold.values()), 4),
                  "total_warm_s": round(sum(statistics.median(v) for v in warm.values()), 4)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
