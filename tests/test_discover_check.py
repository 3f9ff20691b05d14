"""The discovery check: constructs that cannot be followed (file:line) and unattributed loads warn,
with the `mutation-doctor needs` command as the fix."""
from __future__ import annotations

import argparse
import json

from checks.discovery import check_discovery
from doctor.operations import make_context
from tests.test_discover_repo import reid_project


def context(root, settings=None):
    args = argparse.Namespace(project_root=str(root), models_config=None, settings=settings, launch="current",
                              only=None, probe_timeout=None, deprecated_timeout=None, verify=False, deep=False)
    return make_context(args)


def test_unresolved_constructs_and_unattributed_loads_warn(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    reid_project(tmp_path)
    script = tmp_path / "repos" / "reid" / "train.sh"
    script.write_text(script.read_text().replace('PYTHON_PATH="/opt/conda/envs/$CONDA_ENV/bin/python"',
                                                 "PYTHON_PATH=$(command -v python3)"))
    (tmp_path / "s.json").write_text(json.dumps({"experiments": [{"mode": "default", "repo": "reid", "model": "pcb"}]}))
    findings = {f.id: f for f in check_discovery(context(tmp_path, str(tmp_path / "s.json")))}
    unresolved = findings["settings.discovery.unresolved"]
    assert unresolved.status == "warn" and unresolved.experiments == ("reid_pcb_001",)
    assert "train.sh:" in unresolved.detail and "run time" in unresolved.detail
    assert unresolved.fix[0].startswith("mutation-doctor needs -ec ")
    loads = findings["settings.discovery.unattributed"]
    assert "timm swin_base_patch4_window7_224 (model.py:21)" in loads.detail and not loads.experiments
    assert "resnet50" not in loads.detail  # pcb reaches it: attributed, not a candidate


def test_nothing_to_say_when_everything_is_followed(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    reid_project(tmp_path)
    (tmp_path / "repos" / "reid" / "demo.py").unlink()
    model = tmp_path / "repos" / "reid" / "model.py"
    text = model.read_text()
    model.write_text(text[:text.index("class ft_net_swin")] + text[text.index("class PCB"):])
    (tmp_path / "repos" / "reid" / "train.py").write_text(
        (tmp_path / "repos" / "reid" / "train.py").read_text().replace("ft_net_swin(751)", "ft_net_dense(751)")
        .replace("M.ft_net_convnext(751)", "PCB(751)").replace("M.ft_net_eff(751)", "PCB(751)"))
    model.write_text(model.read_text().replace("""        if ibn == True:
            m = torch.hub.load('XingangPan/IBN-Net', 'resnet50_ibn_a', pretrained=True)
""", ""))
    assert check_discovery(context(tmp_path)) == []
