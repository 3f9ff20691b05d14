"""The in-process observer: real interpreters, real timm/torchvision loads of generated weights from the
loopback Hub's cache and a torch hub folder, real DataLoader workers; each program is also run without
the observer and must behave exactly the same."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from observer import OBSERVE_DIR_VAR, SITE_DIR, collect
from tests.support import caches

PYENV = Path("/root/.pyenv/versions")


def _run(argv, env, cwd, observe_dir=None, timeout=180):
    env = dict(env)
    if observe_dir is not None:
        os.makedirs(observe_dir, exist_ok=True)
        env["PYTHONPATH"] = os.pathsep.join([SITE_DIR] + [p for p in [env.get("PYTHONPATH")] if p])
        env[OBSERVE_DIR_VAR] = str(observe_dir)
    return subprocess.run([str(a) for a in argv], env=env, cwd=str(cwd), capture_output=True, text=True, timeout=timeout)


def _same(a, b):
    assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr)


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_site_file_parses_on_old_interpreters():
    import ast

    ast.parse(Path(SITE_DIR, "sitecustomize.py").read_text(), feature_version=(3, 6))


def test_collapse_to_top_folders():
    tree = ["/p/repo/data/M/pytorch/train/0001", "/p/repo/data/M/pytorch/train/0002", "/p/repo/data/M/pytorch/val/0001",
            "/p/repo/models/V", "/p/repo"]
    assert collect.collapse(tree, ["/p/repo"]) == ["/p/repo", "/p/repo/data/M/pytorch", "/p/repo/models/V"]


_CHAIN = "import sys, sitecustomize\nprint(sitecustomize.MARK, [p for p in sys.path if p.endswith(('user', 'site'))])\n"


def test_the_interpreters_own_sitecustomize_still_runs(tmp_path, clean_env):
    user = tmp_path / "user"
    user.mkdir()
    (user / "sitecustomize.py").write_text("MARK = 'user site ran'\n")
    env = dict(clean_env, PYTHONPATH=str(user))
    plain = _run([sys.executable, "-c", _CHAIN], env, tmp_path)
    seen = _run([sys.executable, "-c", _CHAIN], env, tmp_path, tmp_path / "obs")
    assert "user site ran" in plain.stdout
    _same(plain, seen)
    assert collect.collect(str(tmp_path / "obs"))["interpreters"][0]["observable"] is True
    # a failing one is reported by site.py exactly as without the observer, and the program runs
    (user / "sitecustomize.py").write_text("raise RuntimeError('broken site')\n")
    code = "print('ran')"
    _same(_run([sys.executable, "-c", code], env, tmp_path), _run([sys.executable, "-c", code], env, tmp_path, tmp_path / "o2"))


def _old_python():
    for v in sorted(PYENV.glob("3.7*")) + sorted(PYENV.glob("3.6*")):
        exe = v / "bin" / "python"
        if exe.exists():
            return exe
    return None


def test_a_python_too_old_for_audit_hooks_runs_as_before_and_is_recorded_not_observable(tmp_path, clean_env):
    exe = _old_python()
    if exe is None:
        pytest.skip("no Python 3.7/3.6 interpreter under /root/.pyenv/versions")
    code = "import sys; print(open(sys.argv[1]).read().strip(), sys.version_info[:2])"
    data = tmp_path / "data.txt"
    data.write_text("payload")
    plain = _run([exe, "-c", code, data], clean_env, tmp_path)
    seen = _run([exe, "-c", code, data], clean_env, tmp_path, tmp_path / "obs")
    assert plain.returncode == 0 and "payload" in plain.stdout
    _same(plain, seen)
    needs = collect.collect(str(tmp_path / "obs"))
    assert needs["observed"] is False
    (interp,) = needs["interpreters"]
    assert interp["observable"] is False and "audit hooks" in interp["reason"] and interp["version"].startswith("3.")
    assert needs["folders"] == []


_TRAIN = r'''
import json, os, torch
from torch.utils.data import DataLoader, Dataset

class Images(Dataset):
    def __init__(self, root):
        self.files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
    def __len__(self):
        return len(self.files)
    def __getitem__(self, i):
        with open(self.files[i], "rb") as f:
            return torch.tensor(len(f.read()))

total = sum(int(b.sum()) for b in DataLoader(Images("data/Market/pytorch"), batch_size=4, num_workers=2))
cfg = json.load(open("models/local/config.json"))
sd = torch.load("models/local/pytorch_model.bin", weights_only=True)
print("total", total, "workers", torch.utils.data.get_worker_info(), "cfg", cfg["hidden_size"], "local", sorted(sd))
'''


def make_repo(repo: Path) -> Path:
    """A repo folder with a dataset tree (train/val, two classes) and a local model folder."""
    for split in ("train", "val"):
        for cls in ("0001", "0002"):
            d = repo / "data" / "Market" / "pytorch" / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                (d / f"{i}.jpg").write_bytes(b"x" * (i + 1))
    local = repo / "models" / "local"
    local.mkdir(parents=True)
    (local / "config.json").write_text('{"hidden_size": 4}')
    subprocess.run([sys.executable, "-c", "import torch,sys; torch.save({'w': torch.ones(2)}, sys.argv[1])",
                    str(local / "pytorch_model.bin")], check=True)
    return local / "pytorch_model.bin"


def test_dataloader_workers_local_folder_and_dataset(tmp_path, clean_env):
    repo = tmp_path / "repo"
    weights = make_repo(repo)
    (repo / "train.py").write_text(_TRAIN)
    plain = _run([sys.executable, "train.py"], clean_env, repo)
    assert plain.returncode == 0 and "total 24" in plain.stdout, plain.stderr[-2000:]
    seen = _run([sys.executable, "train.py"], clean_env, repo, tmp_path / "obs")
    _same(plain, seen)

    needs = collect.collect(str(tmp_path / "obs"))
    # the images are read only by the forked workers: their lines land in the parent's file
    assert [f["relative"] for f in needs["folders"]] == ["data/Market/pytorch", "models/local"]
    assert [(f["relative"], f["sha256"]) for f in needs["files"]] == [("models/local/pytorch_model.bin", _sha(weights))]
    (interp,) = needs["interpreters"]
    assert interp["observable"] and interp["torch"]["version"].startswith("2.") and interp["torch"]["arch_list"]
    assert needs["hub_files"] == [] and needs["checkpoints"] == [] and needs["hosts"] == []


_DOWNLOAD = r'''
import sys
from huggingface_hub import hf_hub_download
from safetensors.numpy import load_file
path = hf_hub_download(sys.argv[1], "model.safetensors")
print(sorted(load_file(path)))
'''


def test_a_file_downloaded_during_the_run_and_opened_by_native_code(tmp_path, clean_env, hub_server, tiny_weights):
    from tests.support import TINY_REPO

    cache = tmp_path / "hf"
    env = caches.hub_env(hub_server.url, cache, base=clean_env)
    p = _run([sys.executable, "-c", _DOWNLOAD, TINY_REPO], env, tmp_path, tmp_path / "obs")
    assert p.returncode == 0, p.stderr[-2000:]
    needs = collect.collect(str(tmp_path / "obs"))
    (hf,) = needs["hub_files"]
    assert (hf["repo"], hf["revision"], hf["file"]) == (TINY_REPO, "main", "model.safetensors")
    assert hf["sha256"] == hashlib.sha256(tiny_weights).hexdigest() and hf["commit"] == hub_server.commit(TINY_REPO)
    assert {h["host"] for h in needs["hosts"]} == {"127.0.0.1"}


def test_a_process_ended_by_sigterm_keeps_what_it_used(tmp_path, clean_env):
    import signal
    import time

    data = tmp_path / "data" / "set"
    data.mkdir(parents=True)
    (data / "a.csv").write_text("1,2\n")
    code = "import sys, time\nopen(sys.argv[1]).read()\nprint('read', flush=True)\ntime.sleep(60)\n"
    env = dict(clean_env, PYTHONPATH=SITE_DIR, **{OBSERVE_DIR_VAR: str(tmp_path / "obs")})
    (tmp_path / "obs").mkdir()
    proc = subprocess.Popen([sys.executable, "-c", code, str(data / "a.csv")], env=env, cwd=str(tmp_path),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "read\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM  # ended by the signal, as without the observer
    needs = collect.collect(str(tmp_path / "obs"))
    assert [f["relative"] for f in needs["folders"]] == ["data/set"]


def test_a_checkpoint_torch_hub_downloads_keeps_its_url_without_the_secret_in_it(tmp_path, clean_env):
    import functools
    import http.server
    import threading

    served = tmp_path / "srv" / "models"
    served.mkdir(parents=True)
    subprocess.run([sys.executable, "-c", "import torch,sys; torch.save({'w': torch.ones(2)}, sys.argv[1])",
                    str(served / "tiny-0123abcd.pth")], check=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "srv"))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://u:pw@127.0.0.1:{server.server_port}/models/tiny-0123abcd.pth?token=sEcReT"
        code = "import sys, torch.hub; print(sorted(torch.hub.load_state_dict_from_url(sys.argv[1], progress=False)))"
        env = dict(clean_env, TORCH_HOME=str(tmp_path / "torch"))
        p = _run([sys.executable, "-c", code, url.replace("u:pw@", "")], env, tmp_path, tmp_path / "obs")
    finally:
        server.shutdown()
    assert p.returncode == 0, p.stderr[-2000:]
    needs = collect.collect(str(tmp_path / "obs"))
    (cp,) = needs["checkpoints"]
    assert cp["file"] == "tiny-0123abcd.pth" and cp["sha256"] == _sha(served / "tiny-0123abcd.pth")
    assert cp["url"] == f"http://127.0.0.1:{server.server_port}/models/tiny-0123abcd.pth"
    assert "sEcReT" not in "".join(Path(f).read_text() for f in (tmp_path / "obs").glob("*.jsonl"))


def test_urls_lose_credentials_query_and_fragment():
    import importlib.util

    spec = importlib.util.spec_from_file_location("observer_site_under_test", os.path.join(SITE_DIR, "sitecustomize.py"))
    site = importlib.util.module_from_spec(spec)
    env = os.environ.pop(OBSERVE_DIR_VAR, None)
    try:
        spec.loader.exec_module(site)  # without the variable it observes nothing
    finally:
        if env is not None:
            os.environ[OBSERVE_DIR_VAR] = env
    assert site._bare_url("https://user:tok@host.x/a/b.pth?X-Amz-Signature=s#f") == "https://host.x/a/b.pth"


def test_what_the_run_writes_and_reads_back_is_an_output_not_a_need(tmp_path, clean_env):
    (tmp_path / "data" / "set").mkdir(parents=True)
    (tmp_path / "data" / "set" / "a.csv").write_text("1\n")
    code = ("import os\nopen('data/set/a.csv').read()\nos.makedirs('out', exist_ok=True)\n"
            "open('out/net_last.pth', 'wb').write(b'w')\nopen('out/net_last.pth', 'rb').read()\n")
    p = _run([sys.executable, "-c", code], clean_env, tmp_path, tmp_path / "obs")
    assert p.returncode == 0, p.stderr
    needs = collect.collect(str(tmp_path / "obs"))
    assert [f["relative"] for f in needs["folders"]] == ["data/set"] and needs["files"] == []
