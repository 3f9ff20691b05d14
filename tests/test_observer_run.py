"""mutation-run with the observer: real runs of a timm model from the loopback Hub's cache, a torchvision
checkpoint, a local model folder and a dataset read by DataLoader workers produce needs.json beside
experiment.json, an `observed` summary in the record and entries in the needs lock beside the registry;
`--no-observe` leaves all of it out."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import HRNET_REPO, caches
from tests.test_observer import make_repo

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

TRAIN = r'''
import json, sys, torch
from torch.utils.data import DataLoader
model = sys.argv[sys.argv.index("-n") + 1]
if model == "hr":
    import timm
    from os import walk, path

    class Files(torch.utils.data.Dataset):  # read by the forked DataLoader workers
        files = sorted(path.join(d, f) for d, _, fs in walk("data/Market/pytorch") for f in fs)
        def __len__(self):
            return len(self.files)
        def __getitem__(self, i):
            with open(self.files[i], "rb") as f:
                return len(f.read())

    net = timm.create_model("hrnet_w18", pretrained=True)
    n = sum(DataLoader(Files(), batch_size=None, num_workers=2))
else:
    import torchvision
    net = torchvision.models.resnet18(weights="IMAGENET1K_V1")
    cfg = json.load(open("models/local/config.json"))
    sd = torch.load("models/local/pytorch_model.bin", weights_only=True)
print("ACC 0.5", sum(p.numel() for p in net.parameters()))
'''


def _project(tmp_path, hf_cache, torch_home):
    root = tmp_path / "proj"
    repo = root / "repos" / "reid"
    repo.mkdir(parents=True)
    local = make_repo(repo)
    (repo / "train.py").write_text(TRAIN)
    (repo / "train.sh").write_text('#!/bin/bash\nexec python train.py "$@"\n')
    (repo / "train.sh").chmod(0o755)
    (root / "mutation").mkdir()
    reg = {"models": {"reid": {"path": "repos/reid", "train_script": "./train.sh", "models": ["hr", "dn"],
                               "model_flag": "-n", "supported_hyperparams": {},
                               "performance_metrics": {"log_patterns": {"acc": r"ACC ([0-9.]+)"}}}}}
    (root / "mutation" / "models_config.json").write_text(json.dumps(reg))
    exps = [{"mode": "default", "repo": "reid", "model": m, "hyperparameters": {}} for m in ("hr", "dn")]
    (root / "settings.json").write_text(json.dumps({"experiment_name": "t", "max_retries": 0, "experiments": exps}))
    return root, local


def _run(root, env, *extra):
    argv = [PY, "-m", "runner.cli", "--project-root", str(root), "--models-config",
            str(root / "mutation" / "models_config.json"), "-ec", str(root / "settings.json"),
            "--results-dir", str(root / "results"), "--only", "settings,cache", "--grace", "1", *extra]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.skipif("observe" not in __import__("runner.batch", fromlist=["Options"]).Options.__dataclass_fields__,
                    reason="mutation-run does not inject the observer yet")
def test_runs_fill_needs_json_the_record_and_the_lock(tmp_path, clean_env, hub_server, hrnet_hf_cache, hrnet_weights):
    cache = tmp_path / "hf"
    shutil.copytree(hrnet_hf_cache, cache, symlinks=True)
    torch_home = tmp_path / "torch"
    ckpt = caches.place_torchvision_checkpoint(torch_home, "resnet18")
    root, local = _project(tmp_path, cache, torch_home)
    env = caches.hub_env(hub_server.url, cache, base=clean_env, TORCH_HOME=str(torch_home))
    env["PATH"] = os.path.dirname(PY) + os.pathsep + env.get("PATH", "/usr/bin:/bin")

    p = _run(root, env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (run,) = sorted((root / "results").glob("run_*"))
    for eid in ("reid_hr_001", "reid_dn_002"):
        assert (run / eid / "needs.json").is_file() and not (run / eid / "observe").exists()
    hr = json.loads((run / "reid_hr_001" / "experiment.json").read_text())
    assert hr["observed"]["hub_files"] == [f"{HRNET_REPO}@main:model.safetensors"]
    assert hr["observed"]["folders"] == ["data/Market/pytorch"]

    lock = json.loads((root / "mutation" / "needs.lock.json").read_text())
    slot = lock["repos"]["reid"]["hr"]
    (hf,) = slot["hub_files"]
    assert (hf["repo"], hf["revision"], hf["file"], hf["commit"]) == (HRNET_REPO, "main", "model.safetensors",
                                                                     hub_server.commit(HRNET_REPO))
    assert hf["sha256"] == hashlib.sha256(hrnet_weights).hexdigest() and hf["size"] == len(hrnet_weights)
    assert hf["last_seen"]["run"] == f"{run.name}/reid_hr_001"
    assert [f["path"] for f in slot["folders"]] == ["data/Market/pytorch"]
    (interp,) = slot["interpreters"]
    assert interp["executable"] == PY and interp["torch"]["arch_list"]
    dn = lock["repos"]["reid"]["dn"]
    assert [(c["file"], c["sha256"]) for c in dn["checkpoints"]] == [(ckpt.name, _sha(ckpt))]
    assert [f["path"] for f in dn["folders"]] == ["models/local"]
    assert [(f["path"], f["sha256"]) for f in dn["files"]] == [("models/local/pytorch_model.bin", _sha(local))]

    # --no-observe: nothing injected, nothing recorded, the lock untouched
    before = (root / "mutation" / "needs.lock.json").read_bytes()
    shutil.rmtree(root / "results")
    p = _run(root, env, "--no-observe")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (run,) = sorted((root / "results").glob("run_*"))
    assert not (run / "reid_hr_001" / "needs.json").exists()
    assert "observed" not in json.loads((run / "reid_hr_001" / "experiment.json").read_text())
    assert (root / "mutation" / "needs.lock.json").read_bytes() == before
