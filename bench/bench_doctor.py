"""Benchmark: the doctor on the user's 22-experiment batch with every need cached.

Prints one JSON object: wall time of a cold run (nothing memoised: timm/torchvision imported to
resolve model names), a warm run (targets < 0.5 s), `--verify` cold and warm (warm within 10% of
a run without it), and sha256 throughput of the doctor vs `sha256sum` on the same files
(target >= 0.9x).

The cache is laid out exactly as huggingface_hub and torch.hub write it, with random bytes of the
real sizes (the doctor reads and hashes files; it does not load them).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus" / "user-project"
BATCH = CORPUS / "settings" / "archived" / "11_models_quick_validation_1epoch.json"
MODELS = ROOT / "settings" / "models_config.json"
MIB = 1024 * 1024


def _random_file(path: Path, size: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MIB))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


def build_home(home: Path, scale: float) -> list:
    """HF cache entry for hrnet_w18 and torch hub files for densenet121/resnet50, real names."""
    files = []
    hub = home / ".cache" / "huggingface" / "hub" / "models--timm--hrnet_w18.ms_aug_in1k"
    commit = "0" * 40
    tmp = hub / "blobs" / "tmp"
    sha = _random_file(tmp, int(81 * MIB * scale))
    blob = hub / "blobs" / sha
    tmp.rename(blob)
    (hub / "refs").mkdir(parents=True)
    (hub / "refs" / "main").write_text(commit)
    snap = hub / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "model.safetensors").symlink_to(Path("..", "..", "blobs", sha))
    files.append(blob)
    ckpt = home / ".cache" / "torch" / "hub" / "checkpoints"
    for name, mib in (("densenet121-a639ec97.pth", 31), ("resnet50-0676ba61.pth", 98)):
        _random_file(ckpt / name, int(mib * MIB * scale))
        files.append(ckpt / name)
    return files


def project_root(base: Path) -> Path:
    """The user's layout: every repo folder of the shipped registry with an executable train script
    (the settings group blocks a missing repo or script), and repos/VulBERTa/models/VulBERTa present
    (a local model need)."""
    for spec in json.loads(MODELS.read_text())["models"].values():
        repo = base / spec["path"]
        repo.mkdir(parents=True, exist_ok=True)
        script = repo / spec["train_script"]
        script.write_text("#!/bin/sh\necho ok\n")
        script.chmod(0o755)
    model = base / "repos" / "VulBERTa" / "models" / "VulBERTa"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text("{}")
    (model / "pytorch_model.bin").write_bytes(os.urandom(4096))
    return base


def doctor_args(root: Path, only: Optional[str] = "settings,cache") -> list:
    """Arguments of `mutation-doctor` on BATCH with the shipped registry; `only=None` runs every group."""
    return ["-ec", str(BATCH), "--models-config", str(MODELS),
            "--project-root", str(root), *(("--only", only) if only else ())]


def run_doctor(home: Path, root: Path, *extra: str, only: Optional[str] = "settings,cache",
               env: Optional[dict] = None) -> tuple:
    """(wall seconds, parsed JSON report) of `mutation-doctor --json` in a subprocess with HOME=`home`,
    the Hub offline; `extra` adds arguments, `env` adds to or overrides the environment."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(home), "HF_HUB_OFFLINE": "1",
           **(env or {})}
    argv = [sys.executable, "-m", "doctor.cli", *doctor_args(root, only), "--json", *extra]
    t0 = time.perf_counter()
    p = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT, timeout=600)
    wall = time.perf_counter() - t0
    try:
        data = json.loads(p.stdout)
    except ValueError:
        raise SystemExit(f"the doctor printed no JSON (exit {p.returncode}): {p.stderr[-2000:]}") from None
    return wall, data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="files at 1/10 of their real size, one repetition")
    ap.add_argument("--repeat", type=int, default=3, help="warm runs to take the median of")
    args = ap.parse_args()
    if not BATCH.is_file():
        print(json.dumps({"skipped": f"corpus batch not found at {BATCH}"}))
        return 0
    scale = 0.1 if args.quick else 1.0
    reps = 1 if args.quick else args.repeat
    base = Path(tempfile.mkdtemp(prefix="bench-doctor-"))
    try:
        home = base / "home"
        files = build_home(home, scale)
        root = project_root(base / "project")
        memo = home / ".cache" / "mutation-preflight"
        shutil.rmtree(memo, ignore_errors=True)
        cold, data = run_doctor(home, root)
        blocked = data["summary"]["blocked"]
        verdicts: dict = {}
        for e in data["experiments"]:
            verdicts[e.get("verdict")] = verdicts.get(e.get("verdict"), 0) + 1
        warm = sorted(run_doctor(home, root)[0] for _ in range(reps))[reps // 2]
        (memo / "sha256.json").unlink(missing_ok=True)
        verify_cold, _ = run_doctor(home, root, "--verify")
        verify_warm = sorted(run_doctor(home, root, "--verify")[0] for _ in range(reps))[reps // 2]
        total = sum(f.stat().st_size for f in files)
        t0 = time.perf_counter()
        subprocess.run(["sha256sum", *map(str, files)], check=True, capture_output=True)
        sha256sum = time.perf_counter() - t0
        hashing = verify_cold - warm  # the verify run minus the same run without hashing
        # at --quick sizes on a busy machine the difference can drown in noise: then it is not measured
        rate = round(total / MIB / hashing, 1) if hashing > 0.01 else None
        result = {
            "benchmark": "doctor on 11_models_quick_validation_1epoch.json (22 experiments), all needs cached",
            "experiments": len(data["experiments"]), "blocked": blocked, "verdicts": verdicts,
            "bytes_hashed": total,
            "cold_seconds": round(cold, 3), "warm_seconds": round(warm, 3),
            "verify_cold_seconds": round(verify_cold, 3), "verify_warm_seconds": round(verify_warm, 3),
            "sha256sum_seconds": round(sha256sum, 3),
            "doctor_hash_mib_per_s": rate,
            "sha256sum_mib_per_s": round(total / MIB / sha256sum, 1),
            "targets": {"warm_under_0.5s": warm < 0.5,
                        "verify_cold_at_least_0.9x_sha256sum": None if rate is None else rate >= 0.9 * total / MIB / sha256sum,
                        "verify_warm_within_10pct": verify_warm <= warm * 1.10},
        }
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
