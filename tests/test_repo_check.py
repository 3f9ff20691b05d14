"""The doctor checks each repo folder and train script the plan uses; each problem blocks that
repo's experiments, with the fix, and mutation-run --require-preflight holds them back."""
import json
import os
import shutil

import pytest

from doctor.cli import main as doctor_main
from runner.cli import main as run_main
from tests.test_runner_validate import common, write_project


def break_missing_repo(repo):
    shutil.rmtree(repo)


def break_missing_script(repo):
    os.unlink(repo / "train.sh")


def break_folder(repo):
    os.unlink(repo / "train.sh")
    (repo / "train.sh").mkdir()


def break_not_executable(repo):
    (repo / "train.sh").chmod(0o644)


def break_empty(repo):
    (repo / "train.sh").write_text("")


CASES = [(break_missing_repo, "settings.repo.missing", "git clone"),
         (break_missing_script, "settings.train-script.missing", "train_script"),
         (break_folder, "settings.train-script.folder", "train_script"),
         (break_not_executable, "settings.train-script.not-executable", "chmod +x"),
         (break_empty, "settings.train-script.empty", "checkout")]


@pytest.mark.parametrize("breaker,fid,fix", CASES, ids=[c[1] for c in CASES])
def test_each_broken_repo_or_script_blocks_its_experiments_with_the_fix(tmp_path, capsys, breaker, fid, fix):
    root = write_project(tmp_path)
    assert doctor_main(common(root) + ["--json"]) == 0  # healthy: nothing found
    capsys.readouterr()
    breaker(root / "repos" / "r")
    assert doctor_main(common(root) + ["--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    (f,) = [f for f in out["findings"] if f["id"].startswith(("settings.repo.", "settings.train-script."))]
    assert f["id"] == fid and f["status"] == "fail" and any(fix in x for x in f["fix"])
    assert f["experiments"] == ["r_m_001", "r_m_002"]
    assert all(e["verdict"] == "blocked" and fid in e["blocked_by"] for e in out["experiments"])


def test_the_runner_holds_back_a_repo_whose_script_is_not_executable(tmp_path, capsys):
    root = write_project(tmp_path)
    break_not_executable(root / "repos" / "r")
    assert run_main(common(root) + ["--results-dir", str(root / "results"), "-q", "--require-preflight"]) == 1
    err = capsys.readouterr().err
    assert "chmod +x" in err
    (run_dir,) = (root / "results").glob("run_*")
    rec = json.loads((run_dir / "r_m_001" / "experiment.json").read_text())
    assert rec["status"] == "blocked" and "settings.train-script.not-executable" in rec["preflight"]["blocked_by"]
    assert not (root / "repos" / "r" / "ran").exists()
