"""`sudo mutation-run` for a hostile user, through the real sudo as a throwaway user: links and hard
links planted in the results tree never make root write to, append to, or give away root's files
or folders. The victims are the test's own root-owned files, restored at once."""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pytest

from tests.support import sudo_user
from tests.test_cache import open_tmp  # noqa: F401  (a fixture)

pytestmark = pytest.mark.skipif(sudo_user.skip_reason() is not None, reason=str(sudo_user.skip_reason()))
RUN = os.path.join(os.path.dirname(sys.executable), "mutation-run")
SETPRIV = "/usr/bin/setpriv"


def _project(u, base: Path, victims: Path, results: Path) -> Path:
    """Four experiments; the second one's script (root's, as every job under sudo; the run folder
    is the user's once the first experiment has ended) plants, acting as the user, what a hostile
    user would plant for the next ones while the batch runs, and as root a hard link to a root
    file (what protected_hardlinks=0, or a file the user may write, allows)."""
    proj = u.mkdir("proj")
    repo = proj / "repos" / "r"
    repo.mkdir(parents=True)
    as_user = f"{SETPRIV} --reuid={u.uid} --regid={u.gid} --clear-groups"
    run = f'"$(ls -d {shlex.quote(str(results))}/run_*)"'
    (repo / "train.sh").write_text(
        "#!/bin/bash\n"
        'if [ "$4" = "2" ]; then\n'
        f"  R={run}\n"
        f'  {as_user} mkdir "$R/r_m_003"\n'
        f'  {as_user} ln -s {victims}/profile "$R/r_m_003/training.log"\n'
        f'  {as_user} ln -s {victims}/rootdir "$R/r_m_004"\n'
        f'  ln {victims}/hardlinked "$R/planted"\n'
        "fi\n"
        'echo "echo owned by the user # epochs $4"\n'
        "echo 'ACC 1.0'\n")
    (repo / "train.sh").chmod(0o755)
    (proj / "models.json").write_text(json.dumps({"models": {"r": {
        "path": "repos/r", "train_script": "./train.sh", "models": ["m"], "model_flag": "-n",
        "supported_hyperparams": {"epochs": {"flag": "--epochs", "type": "int", "default": 1}},
        "performance_metrics": {"log_patterns": {"acc": r"ACC ([0-9.]+)"}}}}}))
    (proj / "s.json").write_text(json.dumps({"experiment_name": "s", "experiments": [
        {"mode": "default", "repo": "r", "model": "m", "hyperparameters": {"epochs": e}} for e in (1, 2, 3, 4)]}))
    for d, dirs, files in os.walk(proj):
        for n in [*dirs, *files, ""]:
            os.lchown(os.path.join(d, n), u.uid, u.gid)
    return proj


def _victims(base: Path) -> Path:
    v = base / "victims"
    (v / "rootdir").mkdir(parents=True)
    (v / "profile").write_text("# root's profile\n")
    (v / "hardlinked").write_text("root's\n")
    return v


def _state(v: Path) -> dict:
    return {"profile": ((v / "profile").read_text(), (v / "profile").stat().st_uid),
            "hardlinked": ((v / "hardlinked").read_text(), (v / "hardlinked").stat().st_uid),
            "rootdir": (sorted(os.listdir(v / "rootdir")), (v / "rootdir").stat().st_uid)}


def _mrun(u, proj: Path, *args: str):
    argv = ["sudo", "-n", RUN, "-ec", str(proj / "s.json"), "--models-config", str(proj / "models.json"),
            "--project-root", str(proj), "--only", "settings", "--no-energy", "--retry-delay", "0", *args]
    return u.run(argv, env=u.env(), cwd=str(proj), timeout=180)


def test_links_planted_in_the_results_tree_are_never_written_through_or_given(open_tmp):  # noqa: F811
    v = _victims(open_tmp)
    clean = _state(v)
    shared = open_tmp / "shared_results"  # an existing root-owned --results-dir
    shared.mkdir()
    with sudo_user.throwaway_user() as u:
        proj = _project(u, open_tmp, v, shared)
        p = _mrun(u, proj, "--results-dir", str(shared))
        assert "Traceback" not in p.stderr, p.stderr[-3000:]
        assert _state(v) == clean, p.stdout[-3000:] + p.stderr[-3000:]
        assert shared.stat().st_uid == 0  # it was there before: it stays root's
        run = next(shared.glob("run_*"))
        assert run.stat().st_uid == u.uid and (run / "r_m_001" / "experiment.json").stat().st_uid == u.uid
        assert json.loads((run / "r_m_001" / "experiment.json").read_text())["status"] == "passed"
        assert "not written" in p.stdout + p.stderr or "not writing" in p.stdout + p.stderr
        # --resume with the journal pointed at root's profile: a new journal segment, the profile untouched
        os.unlink(run / "journal.jsonl")
        os.symlink(v / "profile", run / "journal.jsonl")
        os.lchown(run / "journal.jsonl", u.uid, u.gid)
        p = u.run(["sudo", "-n", RUN, "--resume", str(run), "--no-energy"], env=u.env(), cwd=str(proj), timeout=180)
        assert "Traceback" not in p.stderr, p.stderr[-3000:]
        assert _state(v) == clean
        assert (run / "journal.2.jsonl").is_file()


def test_a_link_on_the_way_to_the_results_folder_hands_nothing_over(open_tmp):  # noqa: F811
    v = _victims(open_tmp)
    clean = _state(v)
    with sudo_user.throwaway_user() as u:
        proj = _project(u, open_tmp, v, Path(u.home, "x", "rootdir"))
        os.symlink(v, Path(u.home, "x"))  # ln -s / ~/x; --results-dir ~/x/root
        os.lchown(Path(u.home, "x"), u.uid, u.gid)
        p = _mrun(u, proj, "--results-dir", f"{u.home}/x/rootdir")
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
        assert "mutation-run: error: --results-dir" in p.stderr.strip().splitlines()[-1]
        assert "link owned by uid" in p.stderr
        assert _state(v) == clean and (v / "rootdir").stat().st_uid == 0
