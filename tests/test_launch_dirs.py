"""hf_cache_dir / torch_hub_dir agree with what huggingface_hub and torch compute when really started
with a given environment (subprocesses; nothing of this process's environment leaks in)."""
import json
import os
import subprocess
import sys

import pytest

from core.launch import expandvars, expanduser, hf_cache_dir, torch_hub_dir

HOME = "/home/someone"


def _base(**extra):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": HOME, "PYTHONDONTWRITEBYTECODE": "1"}
    env.update(extra)
    return env


HF_CASES = {
    "plain HOME": {},
    "HF_HUB_CACHE": {"HF_HUB_CACHE": "/data/hub-cache"},
    "HUGGINGFACE_HUB_CACHE": {"HUGGINGFACE_HUB_CACHE": "/data/legacy-cache"},
    "HF_HUB_CACHE over HUGGINGFACE_HUB_CACHE": {"HF_HUB_CACHE": "/data/new", "HUGGINGFACE_HUB_CACHE": "/data/old",
                                                "HF_HOME": "/data/home"},
    "HF_HOME": {"HF_HOME": "/data/hf-home"},
    "HF_HOME over XDG_CACHE_HOME": {"HF_HOME": "/data/hf-home", "XDG_CACHE_HOME": "/data/xdg"},
    "XDG_CACHE_HOME": {"XDG_CACHE_HOME": "/data/xdg"},
    "~ in HF_HOME": {"HF_HOME": "~/hf"},
    "~ in HF_HUB_CACHE": {"HF_HUB_CACHE": "~/.hub"},
    "~ in XDG_CACHE_HOME": {"XDG_CACHE_HOME": "~/xdg"},
    "~root in HF_HOME": {"HF_HOME": "~root/hf"},
    "$VAR in HF_HUB_CACHE": {"HF_HUB_CACHE": "$SCRATCH/hub", "SCRATCH": "/scratch/u"},
    "${VAR} in HF_HOME, unknown $NOPE kept": {"HF_HOME": "${SCRATCH}/hf/$NOPE", "SCRATCH": "/scratch/u"},
    "relative HF_HOME": {"HF_HOME": "rel/hf"},
}

_HF_PROBE = "import json, os, huggingface_hub.constants as c; print(json.dumps(os.path.abspath(c.HF_HUB_CACHE)))"


@pytest.mark.parametrize("case", list(HF_CASES))
def test_hf_cache_dir_is_what_huggingface_hub_computes(case):
    env = _base(**HF_CASES[case])
    p = subprocess.run([sys.executable, "-c", _HF_PROBE], env=env, capture_output=True, text=True, timeout=60,
                       cwd=os.getcwd())
    assert p.returncode == 0, p.stderr[-2000:]
    assert hf_cache_dir(env, env["HOME"]) == json.loads(p.stdout)


TORCH_CASES = {
    "plain HOME": {},
    "TORCH_HOME": {"TORCH_HOME": "/data/torch"},
    "TORCH_HOME over XDG_CACHE_HOME": {"TORCH_HOME": "/data/torch", "XDG_CACHE_HOME": "/data/xdg"},
    "XDG_CACHE_HOME": {"XDG_CACHE_HOME": "/data/xdg"},
    "~ in TORCH_HOME": {"TORCH_HOME": "~/t"},
    "~ in XDG_CACHE_HOME": {"XDG_CACHE_HOME": "~/xdg"},
    "$VAR in TORCH_HOME is not expanded by torch": {"TORCH_HOME": "$SCRATCH/t", "SCRATCH": "/scratch/u"},
    "other HOME": {"HOME": "/root"},
}

# torch.hub.get_dir() reads TORCH_HOME, XDG_CACHE_HOME and HOME at each call (not at import), so one
# process answers for every environment: it replaces os.environ wholesale before each call.
_TORCH_PROBE = """
import json, os, sys
import torch.hub
out = {}
for name, env in json.loads(sys.stdin.read()).items():
    os.environ.clear(); os.environ.update(env)
    out[name] = os.path.abspath(torch.hub.get_dir())
print(json.dumps(out))
"""


def test_torch_hub_dir_is_what_torch_computes():
    envs = {name: _base(**extra) for name, extra in TORCH_CASES.items()}
    p = subprocess.run([sys.executable, "-c", _TORCH_PROBE], input=json.dumps(envs), capture_output=True, text=True,
                       timeout=120, env=_base(), cwd=os.getcwd())
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    ours = {name: torch_hub_dir(env, env["HOME"]) for name, env in envs.items()}
    assert ours == got
    assert got["$VAR in TORCH_HOME is not expanded by torch"].endswith("/$SCRATCH/t/hub")


def test_expanduser_and_expandvars_follow_posixpath_on_the_given_environment():
    env = {"HOME": "/h", "A": "1", "B_2": "x"}
    for path in ("~", "~/", "~/a", "~root", "~root/a", "~nosuchuser_xyz/a", "a/~", "/abs"):
        assert expanduser(path, "/h") == _posix_expanduser(path, "/h"), path
    for path in ("$A", "${A}/$B_2", "$NOPE/$A", "no vars", "$", "${A", "$A$A"):
        assert expandvars(path, env) == _posix_expandvars(path, env), path


def _posix_expanduser(path, home):
    code = "import os, sys; print(os.path.expanduser(sys.argv[1]))"
    return subprocess.run([sys.executable, "-c", code, path], env={"HOME": home}, capture_output=True, text=True,
                          timeout=30).stdout.rstrip("\n")


def _posix_expandvars(path, env):
    code = "import os, sys; print(os.path.expandvars(sys.argv[1]))"
    return subprocess.run([sys.executable, "-c", code, path], env=env, capture_output=True, text=True,
                          timeout=30).stdout.rstrip("\n")
