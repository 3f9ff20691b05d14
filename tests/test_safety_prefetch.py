"""`sudo mutation-doctor prefetch` for a hostile user: links planted in the way of the caches never
make root write to, or give away, a file or folder of root's. Real sudo, a throwaway user."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.support import TINY_REPO, sudo_user
from tests.test_cache import make_project, open_tmp  # noqa: F401  (open_tmp is a fixture)

pytestmark = pytest.mark.skipif(sudo_user.skip_reason() is not None, reason=str(sudo_user.skip_reason()))
NEEDS = [{"hf": TINY_REPO, "files": ["config.json", "model.safetensors"]}]


def _prefetch(u, project, hub, **env):
    argv = ["sudo", "-n", "-E", sys.executable, "-m", "doctor.cli", "prefetch", "-ec", "s.json",
            "--models-config", "models.json", "--project-root", str(project), "--json"]
    return u.run(argv, env=u.env(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_TELEMETRY="1", **env), cwd=str(project),
                 timeout=120)


def _user_link(u, link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    for p in [link, *link.parents]:
        if str(p) == u.home:
            break
        os.lchown(p, u.uid, u.gid)


def test_prefetch_through_links_the_user_planted_leaves_roots_files_alone(fresh_hub, open_tmp):  # noqa: F811
    victim_dir = open_tmp / "rootdir"  # stands for /root: root's, others may traverse it
    victim_dir.mkdir()
    project = make_project(open_tmp, NEEDS)
    with sudo_user.throwaway_user() as u:
        # ln -s <root's folder> ~/y; HF_HUB_CACHE=~/y/hub
        _user_link(u, Path(u.home, "y"), victim_dir)
        p = _prefetch(u, project, fresh_hub, HF_HUB_CACHE=f"{u.home}/y/hub")
        assert p.returncode == 1, p.stdout + p.stderr[-2000:]
        assert victim_dir.stat().st_uid == 0 and os.listdir(victim_dir) == []
        assert "Traceback" not in p.stderr
        # the repo's folder in the user's own cache planted as a link to root's folder
        cache = Path(u.home, ".cache", "huggingface", "hub")
        _user_link(u, cache / "models--org--tiny", victim_dir)
        p = _prefetch(u, project, fresh_hub)
        assert os.listdir(victim_dir) == [] and victim_dir.stat().st_uid == 0
        assert json.loads(p.stdout)["missing_after"], p.stdout
        # without the planted link the same prefetch works, and everything in the cache is the user's
        os.unlink(cache / "models--org--tiny")
        p = _prefetch(u, project, fresh_hub)
        assert p.returncode == 0 and json.loads(p.stdout)["missing_after"] == [], p.stderr[-2000:]
        owners = {Path(d, n).lstat().st_uid for d, dirs, files in os.walk(Path(u.home, ".cache")) for n in dirs + files}
        assert owners == {u.uid}
