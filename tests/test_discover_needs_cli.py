"""`mutation-doctor needs`: per repo and model, every need with its provenance and its state in the
launch context (current launch here: this process's own HOME, set to a temp folder)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.test_discover_python import ENTRY
from tests.test_discover_script import REID_LIKE

ROOT = Path(__file__).resolve().parents[1]

# Loads through huggingface_hub (no timm import: the test stays fast); hrnet18 reaches ft_net_hr only.
MODEL = """\
import torch
from huggingface_hub import hf_hub_download

class ft_net(object):
    def __init__(self, class_num, droprate=0.5, ibn=False):
        if ibn:
            m = torch.hub.load('XingangPan/IBN-Net', 'resnet50_ibn_a', pretrained=True)

class ft_net_dense(ft_net):
    pass

class ft_net_swin(object):
    def __init__(self, class_num):
        hf_hub_download('org/swin', 'model.safetensors')

class ft_net_hr(object):
    def __init__(self, class_num):
        hf_hub_download(repo_id='org/hrnet', filename='model.safetensors')

class PCB(ft_net):
    pass
"""


def project(tmp_path: Path, requires=None) -> Path:
    repo = tmp_path / "repos" / "reid"
    repo.mkdir(parents=True)
    script = textwrap.dedent(REID_LIKE).replace('PYTHON_PATH="/opt/conda/envs/$CONDA_ENV/bin/python"',
                                                f'PYTHON_PATH="{sys.executable}"')
    for name, text in {"train.sh": script, "train.py": ENTRY, "model.py": MODEL}.items():
        (repo / name).write_text(text)
    spec = {"path": "repos/reid", "train_script": "./train.sh", "models": ["densenet121", "hrnet18", "pcb"],
            "model_flag": "-n", "supported_hyperparams": {}}
    if requires:
        spec["requires"] = requires
    (tmp_path / "mutation").mkdir()
    (tmp_path / "mutation" / "models_config.json").write_text(json.dumps({"models": {"reid": spec}}))
    (tmp_path / "s.json").write_text(json.dumps({"experiments": [{"mode": "default", "repo": "reid", "model": "hrnet18"}]}))
    return tmp_path


def needs(root: Path, *args, home: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TORCH_", "XDG_", "MUTATION_"))}
    env.update(HOME=str(home), MUTATION_DOCTOR_ASK_SUDO="0", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "doctor.cli", "needs", "--project-root", str(root), *args],
                          capture_output=True, text=True, env=env, cwd=str(root), timeout=120)


def test_needs_json_per_model_with_provenance_and_state(tmp_path):
    root = project(tmp_path / "p")
    (root / "repos" / "reid" / "Market" / "pytorch").mkdir(parents=True)
    (root / "repos" / "reid" / "Market" / "pytorch" / "a.jpg").write_text("x")
    p = needs(root, "-ec", "s.json", "--json", home=tmp_path / "home")
    assert p.returncode == 1, p.stderr[-2000:]  # org/hrnet is not in this HOME's cache
    doc = json.loads(p.stdout)
    reid = next(r for r in doc["repos"] if r["repo"] == "reid")
    assert list(reid["models"]) == ["hrnet18"]  # only the models the settings file runs
    items = {i["kind"]: i for i in reid["models"]["hrnet18"] if i["blocking"]}
    assert items["python"]["state"] == "present" and items["python"]["provenance"] == "discovered train.sh:8"
    assert items["path"]["state"] == "present" and items["path"]["provenance"] == "discovered train.sh:3"
    assert items["hf"]["state"] == "missing" and items["hf"]["provenance"] == "discovered model.py:18"
    assert items["hf"]["path"].startswith(str(tmp_path / "home" / ".cache" / "huggingface" / "hub"))
    assert "train.py:20 ft_net_hr" in items["hf"]["detail"]
    assert {c["label"] for c in reid["candidates"]} == {"hf org/swin", "torchhub XingangPan/IBN-Net"}


def test_needs_text_and_declared_override(tmp_path):
    root = project(tmp_path / "p", requires={"hrnet18": [{"path": "weights/hr.bin"}]})
    (root / "repos" / "reid" / "weights").mkdir()
    (root / "repos" / "reid" / "weights" / "hr.bin").write_text("w")
    p = needs(root, "-ec", "s.json", home=tmp_path / "home")
    section = p.stdout.split("loads no model")[0]
    assert "path weights/hr.bin  [declared, blocks, confidence 1.00]  present" in section, p.stdout
    assert "Market" not in section  # the declared path replaces the discovered data path
    assert "[discovered train.sh:8, blocks" in section and "hf org/hrnet  [discovered model.py:18" in section
    assert p.returncode == 1, p.stderr[-2000:]  # the hrnet weights are missing
