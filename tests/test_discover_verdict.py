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
