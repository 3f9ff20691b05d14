"""The launch matrix against the real sudo, as the issue states it: a normal user (a throwaway user
with a NOPASSWD rule) whose project has no `requires`, the hrnet weights in the user's own Hugging
Face cache and the torchvision checkpoints in root's torch hub, a settings file with a `governor`,
and no --launch. Plain sudo must block hrnet18, sudo -E the torchvision models (naming root's
cache), and the recommended launch none."""
from __future__ import annotations

import contextlib
import json
import os
import textwrap
from pathlib import Path

import pytest

from tests.support.sudo_user import skip_reason, throwaway_user, user_python
from tests.test_discover_python import ENTRY, MODEL
from tests.test_discover_script import REID_LIKE

REASON = skip_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"real sudo tests: {REASON}")

HRNET_REPO = "timm/hrnet_w18.ms_aug_in1k"
TORCH_FILES = ("densenet121-a639ec97.pth", "resnet50-0676ba61.pth")
ROOT_CHECKPOINTS = Path("/root/.cache/torch/hub/checkpoints")


def chown_tree(top: Path, uid: int, gid: int) -> None:
    for d, dirs, files in os.walk(top):
        os.chown(d, uid, gid)
        for f in files:
            os.chown(os.path.join(d, f), uid, gid, follow_symlinks=False)


def write_hf_entry(cache: Path, repo_id: str, filename: str, data: bytes) -> None:
    """The Hub cache layout huggingface_hub writes: refs/main, a snapshot link to the blob."""
    import hashlib

    top = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "a" * 40
    blob = hashlib.sha256(data).hexdigest()
    (top / "refs").mkdir(parents=True, exist_ok=True)
    (top / "refs" / "main").write_text(commit)
    (top / "blobs").mkdir(exist_ok=True)
    (top / "blobs" / blob).write_bytes(data)
    snap = top / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    (snap / filename).symlink_to(f"../../blobs/{blob}")


@contextlib.contextmanager
def root_torch_checkpoints():
    """The torchvision files in root's torch hub for the test; only what we created is removed."""
    created_dirs = [p for p in (ROOT_CHECKPOINTS.parents[2], ROOT_CHECKPOINTS.parents[1], ROOT_CHECKPOINTS.parent,
                                ROOT_CHECKPOINTS) if not p.exists()]
    ROOT_CHECKPOINTS.mkdir(parents=True, exist_ok=True)
    created = []
    try:
        for name in TORCH_FILES:
            p = ROOT_CHECKPOINTS / name
            if not p.exists():
                p.write_bytes(b"test checkpoint\n")
                created.append(p)
        yield
    finally:
        for p in created:
            p.unlink(missing_ok=True)
        for d in reversed(created_dirs):
            with contextlib.suppress(OSError):
                d.rmdir()


@pytest.fixture(scope="module")
def scenario():
    if (Path("/root/.cache/huggingface/hub") / ("models--" + HRNET_REPO.replace("/", "--"))).exists():
        pytest.skip("root's own Hugging Face cache already holds hrnet_w18: the incident cannot be set up")
    with throwaway_user() as u:
        upy = user_python(u)
        if upy is None:
            pytest.skip("no interpreter the throwaway user can import the project with")
        project = Path(u.mkdir("project"))
        repo = project / "repos" / "reid"
        repo.mkdir(parents=True)
        script = textwrap.dedent(REID_LIKE).replace('PYTHON_PATH="/opt/conda/envs/$CONDA_ENV/bin/python"',
                                                    'PYTHON_PATH="/usr/bin/python3"')
        for name, text in {"train.sh": script, "train.py": ENTRY, "model.py": MODEL}.items():
            (repo / name).write_text(text)
        (repo / "Market" / "pytorch").mkdir(parents=True)
        (repo / "Market" / "pytorch" / "0001.jpg").write_bytes(b"image")
        (project / "mutation").mkdir()
        (project / "mutation" / "models_config.json").write_text(json.dumps({"models": {"reid": {
            "path": "repos/reid", "train_script": "./train.sh", "models": ["densenet121", "hrnet18", "pcb"],
            "model_flag": "-n", "supported_hyperparams": {}}}}))
        (project / "batch.json").write_text(json.dumps({"experiment_name": "b", "governor": "performance",
                                                        "experiments": [{"mode": "default", "repo": "reid", "model": m}
                                                                        for m in ("hrnet18", "densenet121", "pcb")]}))
        write_hf_entry(Path(u.home) / ".cache" / "huggingface" / "hub", HRNET_REPO, "model.safetensors", b"weights")
        chown_tree(Path(u.home), u.uid, u.gid)
        with root_torch_checkpoints():
            yield u, upy, project


def run_doctor(u, upy, project, *args):
    argv = [upy[0], "-m", "doctor.cli", "-ec", "batch.json", "--only", "settings,cache,env", *args]
    env = u.env(**upy[1])
    env.pop("MUTATION_LAUNCH", None)
    return u.run(argv, env=env, cwd=str(project), timeout=240)


def ids(row):
    return sorted(e.split("_")[1] for e in row["blocked"])


def test_matrix_names_what_each_launch_blocks(scenario):
    u, upy, project = scenario
    p = run_doctor(*scenario, "--json")
    assert p.returncode in (0, 1, 3), p.stderr[-3000:]
    matrix = json.loads(p.stdout)["launch_matrix"]
    rows = {r["launch"]: r for r in matrix["rows"]}
    assert "governor" in matrix["reason"]
    assert ids(rows["sudo"]) == ["hrnet18"]
    assert ids(rows["sudo -E"]) == ["densenet121", "pcb"]
    torch_missing = [m for m in rows["sudo -E"]["missing"] if m["what"].startswith("torchvision")]
    assert torch_missing and all(any(p["path"].startswith(str(ROOT_CHECKPOINTS)) for p in m["present_in"])
                                 for m in torch_missing)
    rec = [r for r in matrix["rows"] if r["recommended"]]
    assert len(rec) == 1 and rec[0]["blocked"] == []
    assert rec[0]["env"]["HF_HUB_CACHE"] == f"{u.home}/.cache/huggingface/hub"
    assert "TORCH_HOME" not in rec[0]["env"]  # root's torch hub already has the torchvision files
    assert "--preserve-env=HF_HUB_CACHE" in matrix["command"]


def test_matrix_is_shown_first_and_launch_still_selects_one(scenario):
    p = run_doctor(*scenario)
    assert p.returncode in (0, 1, 3), p.stderr[-3000:]
    assert p.stdout.lstrip().startswith("Launch matrix"), p.stdout[:500]
    assert "← recommended" in p.stdout
    chosen = run_doctor(*scenario, "--launch", "sudo-E", "--json")
    assert "launch_matrix" not in json.loads(chosen.stdout)
