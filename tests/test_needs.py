"""Need kinds are adapters: one module plus one registry line, and the rest of the doctor follows."""
import sys
import textwrap

import pytest

from core import needs
from core.model import Need
from core.needs.hf import hf_cache_dir
from core.needs.torchvision import torch_hub_dir
from core.registry import SettingsError
from tests.test_system_support import launch_for, make_ctx, repo

TOY = textwrap.dedent('''
    """A toy hub: files under $TOY_HOME/checkpoints, no network."""
    import os

    from core.needs.base import NeedKind, Resolved


    class Toy(NeedKind):
        name = "toy"
        store = "toyhub"
        cache_vars = ("TOY_HOME",)
        downloaded = inspected = True

        def key(self, spec, repo_dir, home):
            return "toy:" + spec["toy"]

        def resolve(self, spec, cached):
            return Resolved("toyhub", filename=spec["toy"] + ".bin")

        def cache_dir(self, env, home):
            return env.get("TOY_HOME") or os.path.join(home, ".cache", "toy")

        def tasks(self, spec, path, resolved, stores):
            return [("torch", stores["toyhub"], resolved.filename)]


    KIND = Toy()
''')


@pytest.fixture
def toy_kind(tmp_path, monkeypatch):
    """The toy adapter written as a module of its own and registered by one line in core.needs.KINDS."""
    (tmp_path / "toy_kind.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(needs.KINDS, "toy", "toy_kind")
    yield "toy"
    sys.modules.pop("toy_kind", None)


def test_a_new_kind_is_one_module_and_one_registry_line(toy_kind, tmp_path):
    from checks.cache import check_needs

    assert "toy" in needs.kinds(downloaded=True) and "toy" in needs.DOWNLOADED_KINDS
    assert "toy" not in needs.HUB_KINDS  # no Hub behind it: the network group leaves it alone
    toy_home = tmp_path / "toyhome"
    launch = launch_for(env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "TOY_HOME": str(toy_home)})
    assert launch.caches["toy"] == str(toy_home) and launch.stores["toyhub"] == str(toy_home)
    models = {"r": repo(["m"], requires={"m": [{"toy": "weights"}]})}
    settings = {"experiments": [{"repo": "r", "model": "m", "mode": "default", "hyperparameters": {}}]}

    ctx = make_ctx(tmp_path / "p1", models, settings, launch=launch, memo_dir=tmp_path / "memo", groups=("cache",))
    (missing,) = check_needs(ctx)
    assert (missing.id, missing.status) == ("cache.toyhub.missing", "fail") and missing.experiments
    assert str(toy_home) in missing.title and missing.data["need"] == "toy:weights"

    (toy_home / "checkpoints").mkdir(parents=True)
    (toy_home / "checkpoints" / "weights.bin").write_bytes(b"x" * 64)
    ctx = make_ctx(tmp_path / "p2", models, settings, launch=launch, memo_dir=tmp_path / "memo", groups=("cache",))
    (present,) = check_needs(ctx)
    assert (present.id, present.status) == ("cache.toyhub.present", "ok")


def test_the_registry_validates_through_the_adapter(toy_kind, tmp_path):
    bad = {"r": repo(["m"], requires={"m": [{"toy": ""}]})}
    with pytest.raises(SettingsError, match=r"requires\.m\[0\]\.toy: expected a non-empty string"):
        make_ctx(tmp_path / "p", bad, {"experiments": []}, memo_dir=tmp_path / "memo")


def test_unregistered_kind_is_rejected(tmp_path):
    bad = {"r": repo(["m"], requires={"m": [{"toy": "weights"}]})}
    with pytest.raises(SettingsError, match="expected exactly one of timm, torchvision, hf"):
        make_ctx(tmp_path / "p", bad, {"experiments": []}, memo_dir=tmp_path / "memo")


@pytest.mark.parametrize("spec, key", [
    ({"timm": "hrnet_w18"}, "timm:hrnet_w18"),
    ({"timm": "hrnet_w18", "tag": "ms_aug_in1k"}, "timm:hrnet_w18.ms_aug_in1k"),
    ({"torchvision": "densenet121", "pretrained": True}, "torchvision:densenet121:pretrained"),
    ({"torchvision": "resnet50", "weights": "IMAGENET1K_V1"}, "torchvision:resnet50:IMAGENET1K_V1"),
    ({"torchvision": "resnet50"}, "torchvision:resnet50:DEFAULT"),
    ({"hf": "org/name", "files": ["config.json", "a.bin"]}, "hf:org/name@main:config.json,a.bin"),
    ({"path": "data/x", "kind": "dataset"}, "path:/repos/r/data/x"),
    ({"python": "/opt/env/bin/python"}, "python:/opt/env/bin/python"),
    ({"gpu_memory_gb": 4}, "gpu_memory_gb:4"),
])
def test_key_for_is_the_need_key(spec, key):
    kind = needs.need_kind(spec)
    assert needs.key_for(kind, spec, "/repos/r") == key == Need(kind, spec, "r", "/repos/r").key


def test_cache_dirs_follow_the_launch_environment_precedence(tmp_path):
    env = {"HF_HOME": "/h", "XDG_CACHE_HOME": "/x", "TORCH_HOME": "/t"}
    assert needs.cache_dirs(env, "/home/u") == {"timm": "/h/hub", "torchvision": "/t/hub", "hf": "/h/hub",
                                                "url": "/t/hub"}
    assert needs.store_dirs({}, "/root") == {"hf": hf_cache_dir({}, "/root"), "torchhub": torch_hub_dir({}, "/root")}
    assert needs.store_dirs({}, "/root")["hf"] == "/root/.cache/huggingface/hub"


def test_fallback_policy_is_the_adapters():
    assert needs.HUB_KINDS == ("timm", "hf")  # huggingface_hub falls back to its cache when the Hub is down
    assert needs.adapter("torchvision").falls_back is False  # torch.hub does not
    assert set(needs.CACHE_KINDS) == {"timm", "torchvision", "hf", "path", "python", "url"}
    assert needs.adapter("url").falls_back is False  # a checkpoint by URL goes through torch.hub too



def test_url_checkpoints_land_in_the_torch_hub_by_file_name():
    spec = {"url": "https://download.example.org/w/resnet18-f37072fd.pth?dl=1"}
    assert needs.key_for("url", spec, "/repos/r") == "url:resnet18-f37072fd.pth"
    r = needs.adapter("url").resolve(spec, None)
    assert (r.source, r.filename, r.url) == ("torchhub", "resnet18-f37072fd.pth", spec["url"])
    assert needs.adapter("url").validate({"url": "https://host/"}) != []
