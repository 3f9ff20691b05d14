"""Registry-level discovery on a project shaped like the user's: a registry without `requires`, a
reID-like repo selecting models through `train.sh -n` flags, and the declared override."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from core.discover import discover
from core.registry import load_registry
from tests.test_discover_python import ENTRY, MODEL, write_repo
from tests.test_discover_script import REID_LIKE


def registry(root: Path, requires=None) -> Path:
    repo = {"path": "repos/reid", "train_script": "./train.sh", "models": ["densenet121", "hrnet18", "pcb"],
            "model_flag": "-n", "supported_hyperparams": {"lr": {"flag": "--lr", "type": "float", "default": 0.05}}}
    if requires:
        repo["requires"] = requires
    (root / "mutation").mkdir(exist_ok=True)
    path = root / "mutation" / "models_config.json"
    path.write_text(json.dumps({"models": {"reid": repo}}))
    return path


def reid_project(root: Path) -> Path:
    script = textwrap.dedent(REID_LIKE)
    write_repo(root / "repos" / "reid", {"train.sh": script, "train.py": ENTRY, "model.py": MODEL,
                                         "demo.py": "import timm\nm = timm.create_model('vit_base_patch16_224', pretrained=True)\n"})
    return registry(root)


def by_model(root: Path, home="/root", **kw):
    reg = load_registry(str(kw.get("config") or reid_project(root)), str(root))
    return discover(reg, home, "/usr/bin:/bin")["reid"]


def weights(found, blocking=True):
    return {(f.label, f.provenance, f.blocking) for f in found
            if f.kind in ("timm", "torchvision", "torchhub") and f.blocking == blocking}


def test_each_model_gets_its_own_weights_only(tmp_path):
    rn = by_model(tmp_path)
    assert weights(rn.models["hrnet18"]) == {("timm hrnet_w18", "discovered model.py:17", True)}
    assert weights(rn.models["densenet121"]) == {("torchvision densenet121 (pretrained)", "discovered model.py:13", True)}
    # loaded at two places (ft_net and PCB): one need, both places named
    assert weights(rn.models["pcb"]) == {("torchvision resnet50 (pretrained)", "discovered model.py:7, model.py:33", True)}
    # under a condition known only at run time: a warning for each model, never a blocker
    maybe = {("timm tf_efficientnet_b4", "discovered model.py:29", False)}
    assert all(weights(rn.models[m], blocking=False) == maybe for m in ("hrnet18", "densenet121", "pcb"))
    cands = {(c.label, c.provenance, c.blocking, c.model) for c in rn.candidates}
    assert ("timm swin_base_patch4_window7_224", "discovered model.py:21", False, "*") in cands
    assert ("torchhub XingangPan/IBN-Net", "discovered model.py:9", False, "*") in cands
    assert ("timm vit_base_patch16_224", "discovered demo.py:2", False, "*") in cands
    assert not any("hrnet_w18" in c[0] or "densenet121" in c[0] for c in cands)


def test_interpreter_and_data_with_their_script_lines(tmp_path):
    rn = by_model(tmp_path, home="/root")
    hr = {f.kind: f for f in rn.models["hrnet18"] if f.kind in ("python", "path")}
    assert hr["python"].spec == {"python": "/opt/conda/envs/reid/bin/python"}
    assert hr["python"].provenance == "discovered train.sh:8" and hr["python"].blocking
    assert hr["path"].spec == {"path": "./Market/pytorch", "kind": "dataset"}
    assert hr["path"].need.path_for("/root") == str(tmp_path / "repos" / "reid" / "Market" / "pytorch")


def test_declared_requires_override_the_discovered_kind(tmp_path):
    reid_project(tmp_path)
    config = registry(tmp_path, requires={"hrnet18": [{"hf": "org/hr", "files": ["w.bin"]}],
                                          "*": [{"python": "/usr/bin/python3"}]})
    rn = by_model(tmp_path, config=config)
    hr = rn.models["hrnet18"]
    # declared weights (of any weights kind) replace the discovered timm load
    assert [(f.label, f.provenance) for f in hr if f.kind in ("timm", "hf", "python")] == [
        ("python /usr/bin/python3", "declared"), ("hf org/hr", "declared")]
    dense = rn.models["densenet121"]
    assert ("torchvision densenet121 (pretrained)", "discovered model.py:13", True) in weights(dense)
    assert [f.provenance for f in dense if f.kind == "python"] == ["declared"]


def test_discovered_needs_resolve_to_the_files_the_libraries_open(tmp_path):
    pytest.importorskip("timm")
    pytest.importorskip("torchvision")
    from core.resolve import Resolver

    rn = by_model(tmp_path)
    resolver = Resolver(None)

    def files(model):
        out = set()
        for f in rn.models[model]:
            if f.kind in ("timm", "torchvision") and f.blocking:
                r = resolver.resolve(f.need)
                out.add(r.repo_id if r.source == "hf" else r.filename)
        return out

    assert files("hrnet18") == {"timm/hrnet_w18.ms_aug_in1k"}
    assert files("densenet121") == {"densenet121-a639ec97.pth"}
    assert files("pcb") == {"resnet50-0676ba61.pth"}


def test_user_repos_from_the_mirror_when_present(tmp_path):
    """On the user's own five repos (read from the mirror into a temp folder), as the issue asks."""
    import subprocess

    mirror = Path("/work/.mirror/IIllIlllIl+Green-deep-learning/repo")
    config = Path("/work/shared/corpus/user-project/mutation/models_config.json")
    if not mirror.is_dir() or not config.is_file():
        pytest.skip("the user's repos or registry are not on this machine")
    names = ["Person_reID_baseline_pytorch", "pytorch_resnet_cifar10", "VulBERTa", "MRT-OAST",
             "bug-localization-by-dnn-and-rvsm"]
    listed = subprocess.run(["git", "-C", str(mirror), "ls-tree", "-r", "--name-only", "HEAD", "--"]
                            + [f"repos/{n}" for n in names], capture_output=True, text=True, check=True).stdout.split()
    for rel in listed:
        if rel.endswith((".py", ".sh")):
            out = tmp_path / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(subprocess.run(["git", "-C", str(mirror), "show", f"HEAD:{rel}"], capture_output=True,
                                           check=True).stdout)
    (tmp_path / "models_config.json").write_bytes(config.read_bytes())
    reg = load_registry(str(tmp_path / "models_config.json"), str(tmp_path))
    got = discover(reg, "/root", "/usr/bin:/bin")
    reid = got["Person_reID_baseline_pytorch"]
    assert weights(reid.models["hrnet18"]) == {("timm hrnet_w18", "discovered model.py:229", True)}
    assert {f.label for f in reid.models["densenet121"] if f.kind == "torchvision"} == {"torchvision densenet121 (pretrained)"}
    assert {f.label for f in reid.models["pcb"] if f.kind in ("timm", "torchvision", "torchhub")} == {
        "torchvision resnet50 (pretrained)"}
    for name in names:
        for model, found in got[name].models.items():
            assert any(f.kind == "python" and f.provenance.startswith("discovered train.sh:") for f in found), (name, model)


def test_needs_lock_observations_come_first(tmp_path):
    config = reid_project(tmp_path)
    lock = {"format_version": 1, "repos": {"reid": {"hrnet18": {
        "hub_files": [{"repo": "timm/hrnet_w18.ms_aug_in1k", "file": "model.safetensors", "revision": "main",
                       "commit": "c" * 40, "last_seen": {"run": "run_20260101_000000/reid_hrnet18_001"}}],
        "folders": [{"path": "./Market/pytorch", "last_seen": {"run": "run_20260101_000000/reid_hrnet18_001"}}]}}}}
    (config.parent / "needs.lock.json").write_text(json.dumps(lock))
    from core.discover.plan import with_discovered
    from core.plan import registry_plan
    from doctor.operations import observed_needs

    reg = load_registry(str(config), str(tmp_path))
    plan, found = with_discovered(registry_plan(reg), reg, "/root", "/usr/bin:/bin", observed=observed_needs(reg))
    hr = found["reid"].models["hrnet18"]
    hub = [f for f in hr if f.kind == "hf"]
    assert [(f.spec["hf"], f.spec["revision"], f.provenance, f.blocking) for f in hub] == [
        ("timm/hrnet_w18.ms_aug_in1k", "c" * 40, "observed in run_20260101_000000/reid_hrnet18_001", True)]
    assert any(f.kind == "timm" and f.provenance == "discovered model.py:17" for f in hr)
    side = next(e for e in plan.experiments if e.model == "hrnet18").foreground
    assert {n.kind for n in side.needs} >= {"hf", "timm", "python", "path"}
    assert not any(f.kind == "hf" for f in found["reid"].models["pcb"])


def test_unreadable_inputs_are_reported_not_fatal(tmp_path):
    config = reid_project(tmp_path)
    repo = tmp_path / "repos" / "reid"
    (repo / "train.py").write_text("def broken(:\n")
    (repo / "junk.py").write_bytes(b"\xff\xfe\x00garbage(((")
    (repo / "train.sh").write_text((repo / "train.sh").read_text() + "\necho 'unterminated\n")
    rn = by_model(tmp_path, config=config)
    assert any("does not parse" in u.why and u.file.endswith("train.py") for u in rn.unresolved)
    assert not any(f.kind in ("timm", "torchvision") and f.blocking for f in rn.models["hrnet18"])
    assert any(f.kind == "python" for f in rn.models["hrnet18"])  # the script still gives the interpreter
