"""mutation-run with the observer: a real run loading a timm model from the loopback Hub's cache, a
torchvision checkpoint and a local model folder, with a dataset read by DataLoader workers (one
experiment, so torch is imported once), produces needs.json beside experiment.json, an `observed`
summary in the record and entries in the needs lock beside the registry; `--no-observe` leaves all of
it out; under real sudo the observation and the lock are the invoking user's."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import HRNET_REPO, caches, sudo_user
from tests.test_observer import make_repo

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

TRAIN = r'''
import json, sys, torch
from os import walk, path
from torch.utils.data import DataLoader

class Files(torch.utils.data.Dataset):  # read by the forked DataLoader workers
    files = sorted(path.join(d, f) for d, _, fs in walk("data/Market/pytorch") for f in fs)
    def __len__(self):
        return len(self.files)
    def __getitem__(self, i):
        with open(self.files[i], "rb") as f:
            return len(f.read())

if sys.argv[sys.argv.index("-n") + 1] == "hr":
    import timm, torchvision
    hr = timm.create_model("hrnet_w18", pretrained=True)
    tv = torchvision.models.resnet18(weights="IMAGENET1K_V1")
    cfg = json.load(open("models/local/config.json"))
    sd = torch.load("models/local/pytorch_model.bin", weights_only=True)
    n = sum(DataLoader(Files(), batch_size=None, num_workers=2))
print("ACC 0.5")
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
    reg = {"models": {"reid": {"path": "repos/reid", "train_script": "./train.sh", "models": ["hr", "noop"],
                               "model_flag": "-n", "supported_hyperparams": {},
                               "performance_metrics": {"log_patterns": {"acc": r"ACC ([0-9.]+)"}}}}}
    (root / "mutation" / "models_config.json").write_text(json.dumps(reg))
    for name, models in (("settings.json", ["hr"]), ("noop.json", ["noop"]), ("both.json", ["hr", "noop"])):
        exps = [{"mode": "default", "repo": "reid", "model": m, "hyperparameters": {}} for m in models]
        (root / name).write_text(json.dumps({"experiment_name": "t", "max_retries": 0, "experiments": exps}))
    return root, local


def _run(root, env, *extra, settings="settings.json"):
    argv = [PY, "-m", "runner.cli", "--project-root", str(root), "--models-config",
            str(root / "mutation" / "models_config.json"), "-ec", str(root / settings),
            "--results-dir", str(root / "results"), "--only", "settings,cache", "--grace", "1", *extra]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _doctor(root, env, *args, raw=False):
    verb = [args[0]] if args and args[0] == "prefetch" else []
    argv = [os.path.join(os.path.dirname(PY), "mutation-doctor"), *verb, "-ec", str(root / ("settings.json" if verb else "both.json")),
            "--models-config", str(root / "mutation" / "models_config.json"), "--project-root", str(root),
            *([] if verb else ["--only", "cache"]), *args[len(verb):]]
    p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return p if raw else json.loads(p.stdout)


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.slow
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
    assert (run / "reid_hr_001" / "needs.json").is_file() and not (run / "reid_hr_001" / "observe").exists()
    rec = json.loads((run / "reid_hr_001" / "experiment.json").read_text())
    assert rec["observed"]["hub_files"] == [f"{HRNET_REPO}@main:model.safetensors"]
    assert rec["observed"]["folders"] == ["data/Market/pytorch", "models/local"]

    lock = json.loads((root / "mutation" / "needs.lock.json").read_text())
    slot = lock["repos"]["reid"]["hr"]
    (hf,) = slot["hub_files"]
    assert (hf["repo"], hf["revision"], hf["file"], hf["commit"]) == (HRNET_REPO, "main", "model.safetensors",
                                                                     hub_server.commit(HRNET_REPO))
    assert hf["sha256"] == hashlib.sha256(hrnet_weights).hexdigest() and hf["size"] == len(hrnet_weights)
    assert hf["last_seen"]["run"] == f"{run.name}/reid_hr_001"
    assert [(c["file"], c["sha256"]) for c in slot["checkpoints"]] == [(ckpt.name, _sha(ckpt))]
    assert [f["path"] for f in slot["folders"]] == ["data/Market/pytorch", "models/local"]
    assert [(f["path"], f["sha256"]) for f in slot["files"]] == [("models/local/pytorch_model.bin", _sha(local))]
    (interp,) = slot["interpreters"]
    assert interp["executable"] == PY and interp["torch"]["arch_list"]

    # --no-observe: nothing injected, nothing recorded, the lock untouched
    before = (root / "mutation" / "needs.lock.json").read_bytes()
    p = _run(root, env, "--no-observe", settings="noop.json")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (exp,) = (root / "results").glob("run_*/reid_noop_001")
    assert not (exp / "needs.json").exists() and not (exp / "observe").exists()
    assert "observed" not in json.loads((exp / "experiment.json").read_text())
    assert (root / "mutation" / "needs.lock.json").read_bytes() == before

    # later batches are held to the lock: the weights gone from the cache block exactly that model's
    # experiments, citing the run that recorded them; prefetch brings back exactly the locked revision
    shutil.rmtree(cache / "models--timm--hrnet_w18.ms_aug_in1k")
    report = _doctor(root, env, "--json")
    verdicts = {e["id"]: e["verdict"] for e in report["experiments"]}
    assert verdicts["reid_hr_001"] == "blocked" and verdicts["reid_noop_002"] != "blocked"
    assert any(f"observed in {run.name}/reid_hr_001" in f["detail"] for f in report["findings"]
               if f["status"] == "fail" and "reid_hr_001" in f["experiments"])
    p = _doctor(root, env, "prefetch", raw=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    blob = cache / "models--timm--hrnet_w18.ms_aug_in1k" / "blobs" / hf["sha256"]
    assert _sha(blob) == hf["sha256"]
    assert {e["id"]: e["verdict"] for e in _doctor(root, env, "--json")["experiments"]}["reid_hr_001"] != "blocked"

    # other bytes under the locked name: a warning, a blocking failure with --locked
    blob.write_bytes(b"not the recorded weights")
    report = _doctor(root, env, "--json")
    (changed,) = [f for f in report["findings"] if f["id"] == "cache.locked.changed"]
    assert changed["status"] == "warn" and changed["experiments"] == ["reid_hr_001"]
    assert "the weights changed since the recorded runs" in changed["title"]
    report = _doctor(root, env, "--json", "--locked")
    (changed,) = [f for f in report["findings"] if f["id"] == "cache.locked.changed"]
    verdicts = {e["id"]: e for e in report["experiments"]}
    assert changed["status"] == "fail" and "cache.locked.changed" in verdicts["reid_hr_001"]["blocked_by"]


@pytest.mark.skipif(sudo_user.skip_reason() is not None, reason=str(sudo_user.skip_reason()))
def test_under_real_sudo_the_observation_and_the_lock_are_the_users():
    with sudo_user.throwaway_user() as u:
        proj = u.mkdir("proj")
        repo = proj / "repos" / "r"
        (repo / "data" / "set").mkdir(parents=True)
        (repo / "data" / "set" / "a.csv").write_text("1,2\n")
        (repo / "train.sh").write_text("#!/bin/bash\nexec python3 -c \"open('data/set/a.csv').read(); print('ACC 1.0')\"\n")
        (repo / "train.sh").chmod(0o755)
        (proj / "mutation").mkdir()
        (proj / "mutation" / "models_config.json").write_text(json.dumps({"models": {"r": {
            "path": "repos/r", "train_script": "./train.sh", "models": ["m"], "model_flag": "-n",
            "supported_hyperparams": {}, "performance_metrics": {"log_patterns": {"acc": r"ACC ([0-9.]+)"}}}}}))
        (proj / "s.json").write_text(json.dumps({"experiment_name": "s", "experiments": [
            {"mode": "default", "repo": "r", "model": "m", "hyperparameters": {}}]}))
        for d, dirs, files in os.walk(proj):
            for n in [*dirs, *files, ""]:
                os.lchown(os.path.join(d, n), u.uid, u.gid)
        argv = ["sudo", "-n", os.path.join(os.path.dirname(PY), "mutation-run"), "-ec", str(proj / "s.json"),
                "--models-config", str(proj / "mutation" / "models_config.json"), "--project-root", str(proj),
                "--only", "settings", "--no-energy", "--retry-delay", "0"]
        p = u.run(argv, env=u.env(), cwd=str(proj), timeout=180)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        lock = proj / "mutation" / "needs.lock.json"
        (needs,) = (proj / "results").glob("run_*/r_m_001/needs.json")
        for path in (lock, Path(str(lock) + ".lock"), needs):
            assert path.stat().st_uid == u.uid, path
        slot = json.loads(lock.read_text())["repos"]["r"]["m"]
        assert [f["path"] for f in slot["folders"]] == ["data/set"]
        assert [i["executable"] for i in slot["interpreters"]] == [json.loads(needs.read_text())["interpreters"][0]["executable"]]
