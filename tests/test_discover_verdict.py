"""No false all-clear: which experiments are unverified (nothing established about their needs)."""
from __future__ import annotations

from types import SimpleNamespace

from core.discover.established import unverified
from core.model import Experiment, Need, Side


def exp(eid, *needs):
    return Experiment(id=eid, mode="default", foreground=Side(repo="r", model=eid, needs=tuple(needs)))


def ctx(experiments, states, groups=("settings", "cache")):
    return SimpleNamespace(options=SimpleNamespace(groups=groups), plan=SimpleNamespace(experiments=experiments),
                           need_states=lambda: {k: SimpleNamespace(status=v) for k, v in states.items()})


PY = Need(kind="python", spec={"python": "/usr/bin/python3"}, repo="r", repo_dir="/r")
DATA = Need(kind="path", spec={"path": "/data/x"}, repo="r", repo_dir="/r")
GPU = Need(kind="gpu_memory_gb", spec={"gpu_memory_gb": 4}, repo="r", repo_dir="/r")


def test_nothing_known_is_unverified_and_answers_are_not():
    c = ctx([exp("none"), exp("present", PY), exp("missing", DATA), exp("noanswer", PY, DATA), exp("gpu", GPU)],
            {PY.key: "unreadable", DATA.key: "error"})
    got = unverified(c)
    assert set(got) == {"none", "present", "missing", "noanswer", "gpu"}
    assert "nothing declared or discovered" in got["none"]
    c = ctx([exp("present", PY), exp("missing", DATA), exp("half", PY, DATA)], {PY.key: "present", DATA.key: "unknown"})
    assert set(unverified(c)) == {"missing"}
    c = ctx([exp("missing", DATA)], {DATA.key: "missing"})
    assert unverified(c) == {}  # missing is an answer: the experiment is blocked, not unverified


def test_only_decided_when_the_cache_group_ran():
    assert unverified(ctx([exp("none")], {}, groups=("network",))) == {}


def run_doctor(root, *args):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TORCH_", "XDG_", "MUTATION_"))}
    env.update(HOME=str(root / "home"), MUTATION_DOCTOR_ASK_SUDO="0",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run([sys.executable, "-m", "doctor.cli", "-ec", "s.json", "--project-root", str(root),
                           "--only", "settings,cache", "--launch", "current", *args],
                          capture_output=True, text=True, env=env, cwd=str(root), timeout=120)


def test_the_doctor_says_unverified_and_exits_3(tmp_path):
    import json
    import sys

    repo = tmp_path / "repos" / "r"
    repo.mkdir(parents=True)
    (repo / "train.sh").write_text("#!/bin/sh\necho trained\n")
    (repo / "train.sh").chmod(0o755)
    (repo / "ok.sh").write_text(f"#!/bin/sh\n{sys.executable} run.py\n")
    (repo / "ok.sh").chmod(0o755)
    (repo / "run.py").write_text("print('ok')\n")
    (tmp_path / "mutation").mkdir()
    (tmp_path / "mutation" / "models_config.json").write_text(json.dumps({"models": {
        "r": {"path": "repos/r", "train_script": "./train.sh", "models": ["m"], "supported_hyperparams": {}},
        "q": {"path": "repos/r", "train_script": "./ok.sh", "models": ["m"], "supported_hyperparams": {}}}}))
    (tmp_path / "s.json").write_text(json.dumps({"experiments": [{"mode": "default", "repo": "r", "model": "m"},
                                                                 {"mode": "default", "repo": "q", "model": "m"}]}))
    p = run_doctor(tmp_path, "--json")
    assert p.returncode == 3, p.stderr[-2000:]
    doc = json.loads(p.stdout)
    verdicts = {e["id"]: (e["verdict"], e.get("reason", "")) for e in doc["experiments"]}
    assert verdicts["r_m_001"][0] == "unverified" and "nothing declared or discovered" in verdicts["r_m_001"][1]
    assert verdicts["q_m_002"] == ("pass", "")  # its interpreter, discovered in ok.sh, is present
    assert doc["summary"]["unverified"] == 1 and doc["summary"]["pass"] == 1
    text = run_doctor(tmp_path)
    assert "1 of 2 experiment(s) can run, 0 blocked, 1 unverified" in text.stdout, text.stdout[-1500:]
    assert text.returncode == 3
