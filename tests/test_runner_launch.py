"""The runner's launch policy for real: a gated experiment that has its weights loads them offline
(HF_HUB_OFFLINE=1 set by the runner, not one request to the Hub), and a run as root under a real
`sudo` for a throwaway user finds the weights in that user's cache, points the child at it, and
leaves no root-owned file in the user's cache or results."""
import json
import os
import pwd
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support import caches, weights

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TIMM_REPO = "timm/resnet18.a1_in1k"


def _run_dir(results: Path) -> Path:
    dirs = sorted(results.glob("run_*"))
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.mark.slow
def test_demo_timm_experiment_loads_its_cached_weights_offline(tmp_path, clean_env, fresh_hub, weights_dir):
    fresh_hub.add_file(TIMM_REPO, "model.safetensors", weights.timm_safetensors_bytes("resnet18"))
    home = Path(clean_env["HOME"])
    cache = home / ".cache" / "huggingface" / "hub"
    caches.populate_hf_cache(fresh_hub.url, cache, TIMM_REPO, "model.safetensors")
    settings = tmp_path / "timm_only.json"
    demo = json.loads((ROOT / "settings" / "demo.json").read_text())
    demo["experiments"] = [e for e in demo["experiments"] if e["model"] == "timm_resnet18"]
    settings.write_text(json.dumps(demo))
    env = dict(clean_env, HF_ENDPOINT=fresh_hub.url, PATH=os.path.dirname(PY) + os.pathsep + clean_env["PATH"])
    before = len(fresh_hub.requests)
    results = tmp_path / "results"
    p = subprocess.run([PY, "-m", "runner.cli", "--require-preflight", "-ec", str(settings), "--project-root", str(ROOT),
                        "--models-config", str(ROOT / "settings" / "models_config.json"), "--results-dir", str(results),
                        "--needs-lock", str(tmp_path / "needs.lock.json"),  # not beside the bundled registry
                        "--only", "settings,cache", "--timeout", "240", "-q"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((_run_dir(results) / "demo_timm_resnet18_001" / "experiment.json").read_text())
    assert r["status"] == "passed" and r["preflight"]["verdict"] == "pass"
    assert r["launch"]["env_set"]["HF_HUB_OFFLINE"] == "1" and r["launch"]["env_set"]["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert r["launch"]["offline"] is True and r["launch"]["hf_cache"] == str(cache)
    need = next(n for n in r["preflight"]["needs"] if n["kind"] == "timm")
    assert need["status"] == "present" and need["path"].startswith(str(cache))
    assert "test_accuracy" in r["performance_metrics"]
    assert fresh_hub.requests[before:] == []  # offline: the Hub was never asked
    assert (tmp_path / "needs.lock.json").is_file()  # the passed run's lock went where --needs-lock said


# -- real sudo ----------------------------------------------------------------------------------
def _sudo_ready():
    if os.getuid() != 0:
        return "needs root (creates a throwaway user and a sudoers rule)"
    for tool in ("sudo", "useradd", "userdel", "visudo"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs sudo)"
    return ""


@pytest.fixture
def sudo_user(tmp_path):
    """A throwaway user with a home and a NOPASSWD sudo rule; removed afterwards."""
    why = _sudo_ready()
    if why:
        pytest.skip(why)
    name = "mprun" + uuid.uuid4().hex[:6]
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True, capture_output=True)
    rule = Path("/etc/sudoers.d") / f"{name}"
    try:
        tmp_rule = tmp_path / "rule"
        tmp_rule.write_text(f"{name} ALL=(ALL) NOPASSWD: ALL\n")
        subprocess.run(["visudo", "-cf", str(tmp_rule)], check=True, capture_output=True)
        shutil.copy(tmp_rule, rule)
        rule.chmod(0o440)
        yield pwd.getpwnam(name)
    finally:
        rule.unlink(missing_ok=True)
        subprocess.run(["userdel", "-r", "-f", name], capture_output=True)


def _root_owned(top: Path):
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames + [""]:
            p = os.path.join(dirpath, n) if n else dirpath
            if os.lstat(p).st_uid == 0:
                out.append(p)
    return sorted(set(out))


@pytest.mark.slow
def test_under_real_sudo_the_child_uses_the_users_cache_and_leaves_nothing_root_owned(sudo_user, fresh_hub, tmp_path):
    home = Path(sudo_user.pw_dir)
    uid, gid = sudo_user.pw_uid, sudo_user.pw_gid
    user_cache = home / ".cache" / "huggingface" / "hub"
    caches.populate_hf_cache(fresh_hub.url, user_cache, "org/tiny", "model.safetensors")
    # the project lives in the user's home, as theirs does
    proj = home / "proj"
    repo = proj / "repos" / "r"
    repo.mkdir(parents=True)
    (repo / "train.sh").write_text(
        "#!/bin/bash\n"
        'echo "HOME=$HOME HF_HUB_CACHE=$HF_HUB_CACHE HF_HUB_OFFLINE=$HF_HUB_OFFLINE id=$(id -u)"\n'
        'mkdir -p "$HF_HUB_CACHE/models--org--new/blobs" && echo x > "$HF_HUB_CACHE/models--org--new/blobs/abc"\n'
        "mkdir -p checkpoints && echo w > checkpoints/last.pt\n"
        f'exec {PY} -c "import os, sys; p = os.path.join(os.environ[\'HF_HUB_CACHE\'], \'models--org--tiny\'); '
        'print(\'ACC 1.0\' if os.path.isdir(p) else \'no cache\'); sys.exit(0 if os.path.isdir(p) else 3)"\n')
    (repo / "train.sh").chmod(0o755)
    reg = {"models": {"r": {"path": "repos/r", "train_script": "./train.sh", "models": ["m"], "model_flag": "-n",
                            "supported_hyperparams": {},
                            "performance_metrics": {"log_patterns": {"acc": r"ACC ([0-9.]+)"}},
                            "requires": {"m": [{"hf": "org/tiny", "files": ["model.safetensors"]}]}}}}
    (proj / "models_config.json").write_text(json.dumps(reg))
    (proj / "settings.json").write_text(json.dumps({"experiment_name": "s", "experiments": [
        {"mode": "default", "repo": "r", "model": "m", "hyperparameters": {}}]}))
    for dirpath, dirnames, filenames in os.walk(home):
        for n in dirnames + filenames + [""]:
            os.lchown(os.path.join(dirpath, n) if n else dirpath, uid, gid)
    assert _root_owned(home) == []
    results = proj / "results"
    argv = ["sudo", "-n", os.path.join(os.path.dirname(PY), "mutation-run"), "--require-preflight",
            "-ec", str(proj / "settings.json"), "--project-root", str(proj), "--models-config", str(proj / "models_config.json"),
            "--results-dir", str(results), "--only", "settings,cache", "--timeout", "60"]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "USER": sudo_user.pw_name,
           "LOGNAME": sudo_user.pw_name, "HF_ENDPOINT": fresh_hub.url}
    p = subprocess.run(argv, cwd=str(proj), env=env, user=uid, group=gid, extra_groups=[], capture_output=True,
                       text=True, timeout=180)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    rd = _run_dir(results)
    r = json.loads((rd / "r_m_001" / "experiment.json").read_text())
    assert r["launch"]["user"] == "root" and r["launch"]["home"] == "/root"
    assert r["launch"]["invoking_user"] == sudo_user.pw_name
    assert r["launch"]["env_set"]["HF_HUB_CACHE"] == str(user_cache)
    assert r["launch"]["env_set"]["HF_HUB_OFFLINE"] == "1"
    assert r["preflight"]["verdict"] == "pass" and r["preflight"]["hf_cache"] == str(user_cache)
    log = (rd / "r_m_001" / "training.log").read_text()
    assert f"HOME=/root HF_HUB_CACHE={user_cache} HF_HUB_OFFLINE=1 id=0" in log
    assert r["status"] == "passed"
    # what root created in the user's cache, repo and results was given back
    assert (user_cache / "models--org--new" / "blobs" / "abc").stat().st_uid == uid
    assert (repo / "checkpoints" / "last.pt").stat().st_uid == uid
    assert _root_owned(home) == []
