"""Python-side discovery: loads recognised with literal arguments, negatives staying negative, and
attribution through the flag dispatch (small repos written here, never copies of the user's)."""
from __future__ import annotations

import textwrap
from pathlib import Path

from core.discover.attribute import MAYBE, YES, reached_loads
from core.discover.pysource import path_defaults, scan_source
from core.discover.repo import SourceMemo


def loads(src: str):
    s = scan_source(textwrap.dedent(src))
    return [(e["line"], e["load"]) for events in s["scopes"].values() for e in events if "load" in e]


def specs(src: str):
    return [(ld["kind"], ld["spec"], ld.get("unresolved", "")) for _, ld in loads(src)]


def test_timm_and_torchvision_literal_loads():
    got = specs("""
        import timm
        from torchvision import models
        import torchvision
        from torchvision.models import resnet50, ResNet50_Weights
        a = timm.create_model('hrnet_w18', pretrained=True)
        b = models.densenet121(pretrained=True)
        c = resnet50(weights=ResNet50_Weights.IMAGENET1K_V1)
        d = torchvision.models.resnet50(weights="DEFAULT")
        e = models.resnet50(weights=models.ResNet50_Weights.DEFAULT)
        f = torchvision.models.get_model("vit_b_16", weights="IMAGENET1K_V1")
    """)
    assert got == [
        ("timm", {"timm": "hrnet_w18"}, ""),
        ("torchvision", {"torchvision": "densenet121", "pretrained": True}, ""),
        ("torchvision", {"torchvision": "resnet50", "weights": "IMAGENET1K_V1"}, ""),
        ("torchvision", {"torchvision": "resnet50", "weights": "DEFAULT"}, ""),
        ("torchvision", {"torchvision": "resnet50", "weights": "DEFAULT"}, ""),
        ("torchvision", {"torchvision": "vit_b_16", "weights": "IMAGENET1K_V1"}, ""),
    ]


def test_negatives_stay_negative():
    assert specs("""
        import timm
        from torchvision import models
        # m = timm.create_model('hrnet_w18', pretrained=True)
        a = timm.create_model('swinv2_base_window8_256', pretrained=False)
        b = models.resnet50(weights=None)
        c = models.resnet50()
        s = "timm.create_model('convnext_base', pretrained=True)"
        d = models.ResNet(block, [2, 2])
    """) == []


def test_names_built_at_run_time_are_unresolvable_candidates():
    got = specs("""
        import timm
        from torchvision import models
        a = timm.create_model(args.arch, pretrained=True)
        b = timm.create_model('resnet18', pretrained=args.pre)
        c = models.resnet50(weights=args.weights)
    """)
    assert [(k, "run time" in why) for k, _, why in got] == [("timm", True), ("timm", True), ("torchvision", True)]


def test_hub_url_hf_and_from_pretrained_loads():
    got = specs("""
        import torch
        from torch.hub import load_state_dict_from_url
        from huggingface_hub import hf_hub_download, snapshot_download
        from transformers import AutoModel, RobertaForSequenceClassification
        a = torch.hub.load('XingangPan/IBN-Net', 'resnet50_ibn_a', pretrained=True)
        b = load_state_dict_from_url('https://download.example.org/w/resnet18-f37072fd.pth?x=1')
        c = hf_hub_download(repo_id='org/name', filename='config.json', revision='v1')
        d = snapshot_download('org/snap')
        e = AutoModel.from_pretrained('bert-base-uncased/x')
        f = RobertaForSequenceClassification.from_pretrained('./models/VulBERTa/')
    """)
    assert got == [
        ("torchhub", {"torchhub": "XingangPan/IBN-Net", "model": "resnet50_ibn_a"}, ""),
        ("url", {"url": "https://download.example.org/w/resnet18-f37072fd.pth?x=1", "file": "resnet18-f37072fd.pth"}, ""),
        ("hf", {"hf": "org/name", "revision": "v1", "files": ["config.json"]}, ""),
        ("hf-snapshot", {"hf": "org/snap", "revision": "main"}, ""),
        ("hf", {"hf": "bert-base-uncased/x", "files": ["config.json"]}, ""),
        ("path", {"path": "./models/VulBERTa/", "kind": "model folder"}, ""),
    ]


def test_dataset_downloads_and_argparse_path_defaults():
    src = """
        import argparse
        import torchvision.datasets as datasets
        p = argparse.ArgumentParser()
        p.add_argument('--data_dir', default='../Market/pytorch', type=str)
        p.add_argument('--save-dir', default='./save')
        p.add_argument('--lr', default=0.1)
        a = datasets.CIFAR10(root='./data', train=True, download=True)
        b = datasets.MNIST('./mnist', download=False)
    """
    assert specs(src) == [("path", {"path": "./data/cifar-10-batches-py", "kind": "dataset", "downloads": "CIFAR10"}, "")]
    assert [a["default"] for a in path_defaults(scan_source(textwrap.dedent(src)))] == ["../Market/pytorch"]


ENTRY = """\
import argparse
import os
from model import ft_net, ft_net_dense, ft_net_hr, ft_net_swin, PCB
import model as M
parser = argparse.ArgumentParser()
parser.add_argument('--use_dense', action='store_true')
parser.add_argument('--use_hr', action='store_true')
parser.add_argument('--use_swin', action='store_true')
parser.add_argument('--PCB', action='store_true')
parser.add_argument('--ibn', action='store_true')
parser.add_argument('--seed', type=int, default=None)
opt = parser.parse_args()

def build():
    if opt.use_dense:
        model = ft_net_dense(751)
    elif opt.use_swin:
        model = ft_net_swin(751)
    elif opt.use_hr:
        model = ft_net_hr(751)
    else:
        model = ft_net(751, 0.5, ibn=opt.ibn)
    if opt.PCB:
        model = PCB(751)
    if opt.seed is not None:
        model = M.ft_net_convnext(751)
    if os.environ.get("EFF"):
        model = M.ft_net_eff(751)
    return model

if __name__ == '__main__':
    build()
"""

MODEL = """\
import timm
import torch
from torchvision import models

class ft_net(object):
    def __init__(self, class_num, droprate=0.5, ibn=False):
        m = models.resnet50(pretrained=True)
        if ibn == True:
            m = torch.hub.load('XingangPan/IBN-Net', 'resnet50_ibn_a', pretrained=True)

class ft_net_dense(object):
    def __init__(self, class_num):
        m = models.densenet121(pretrained=True)

class ft_net_hr(object):
    def __init__(self, class_num):
        m = timm.create_model('hrnet_w18', pretrained=True)

class ft_net_swin(object):
    def __init__(self, class_num):
        m = timm.create_model('swin_base_patch4_window7_224', pretrained=True)

class ft_net_convnext(object):
    def __init__(self, class_num):
        m = timm.create_model('convnext_base', pretrained=True)

class ft_net_eff(object):
    def __init__(self, class_num):
        m = timm.create_model('tf_efficientnet_b4', pretrained=True)

class PCB(object):
    def __init__(self, class_num):
        m = models.resnet50(pretrained=True)

if __name__ == '__main__':
    ft_net_hr(751)
"""


def write_repo(root: Path, files: dict) -> Path:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def reached(repo: Path, argv):
    got, _ = reached_loads(str(repo), str(repo / "train.py"), argv, SourceMemo(None).summary)
    return {(r.load["spec"].get("timm") or r.load["spec"].get("torchvision") or r.load["spec"].get("torchhub"),
             r.file, r.line, r.status) for r in got}


def test_flags_reach_only_their_own_model_class(tmp_path):
    repo = write_repo(tmp_path, {"train.py": ENTRY, "model.py": MODEL})
    maybe = ("tf_efficientnet_b4", "model.py", 29, MAYBE)  # under a condition known only at run time
    assert reached(repo, ["--use_hr"]) == {("hrnet_w18", "model.py", 17, YES), maybe}
    assert reached(repo, ["--use_dense"]) == {("densenet121", "model.py", 13, YES), maybe}
    # ft_net (else branch, ibn=opt.ibn is False: no IBN-Net) and PCB both load resnet50
    assert reached(repo, ["--PCB"]) == {("resnet50", "model.py", 7, YES), ("resnet50", "model.py", 33, YES), maybe}
    # --seed given: `opt.seed is not None` holds, convnext is reached
    assert ("convnext_base", "model.py", 25, YES) in reached(repo, ["--PCB", "--seed", "3"])
    assert ("XingangPan/IBN-Net", "model.py", 9, YES) in reached(repo, ["--ibn"])


def test_chain_names_each_hop(tmp_path):
    repo = write_repo(tmp_path, {"train.py": ENTRY, "model.py": MODEL})
    got, opts = reached_loads(str(repo), str(repo / "train.py"), ["--use_hr"], SourceMemo(None).summary)
    hr = next(r for r in got if r.status == YES)
    assert hr.chain == ("train.py", "train.py:32 build", "train.py:20 ft_net_hr", "model.py:17")
    assert opts["use_hr"] is True and opts["use_dense"] is False


def test_memo_scans_a_file_once_per_size_and_mtime(tmp_path):
    repo = write_repo(tmp_path / "r", {"train.py": ENTRY, "model.py": MODEL})
    memo_file = tmp_path / "memo.json"
    m = SourceMemo(str(memo_file))
    reached_loads(str(repo), str(repo / "train.py"), ["--use_hr"], m.summary)
    m.save()
    assert m.scanned == 2
    warm = SourceMemo(str(memo_file))
    reached_loads(str(repo), str(repo / "train.py"), ["--use_hr"], warm.summary)
    assert warm.scanned == 0
    (repo / "model.py").write_text(MODEL.replace("hrnet_w18", "hrnet_w32"))
    again = SourceMemo(str(memo_file))
    got, _ = reached_loads(str(repo), str(repo / "train.py"), ["--use_hr"], again.summary)
    assert again.scanned == 1 and {r.load["spec"].get("timm") for r in got if r.status == YES} == {"hrnet_w32"}


def test_memo_is_not_written_into_another_users_folder(tmp_path):
    import os

    import pytest

    if os.geteuid() != 0:
        pytest.skip("needs root to own a folder for another user")
    repo = write_repo(tmp_path / "r", {"train.py": ENTRY, "model.py": MODEL})
    theirs = tmp_path / "home"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    for memo_file, written in ((theirs / ".cache" / "mp" / "memo.json", False), (tmp_path / "own" / "memo.json", True)):
        m = SourceMemo(str(memo_file))
        reached_loads(str(repo), str(repo / "train.py"), ["--use_hr"], m.summary)
        m.save()
        assert memo_file.exists() is written
        assert (theirs / ".cache").exists() is False
