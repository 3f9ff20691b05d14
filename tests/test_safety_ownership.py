"""core.ownership.give_back for what children wrote as root: never a folder that was there before,
never through a link, never a file with a second link to something of root's."""
from __future__ import annotations

import os
import time

import pytest

from core.ownership import give_back, snapshot

UID = GID = 54321
pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="giving files to another user needs root")


def uid_of(p) -> int:
    return os.lstat(p).st_uid


def test_a_folder_that_existed_is_never_given_even_when_the_run_touched_it(tmp_path):
    shared = tmp_path / "srv" / "shared" / "results"  # an existing root-owned --results-dir
    shared.mkdir(parents=True)
    before = snapshot([shared / "run_1"])
    since = time.time()
    (shared / "run_1" / "exp").mkdir(parents=True)  # changes the ctime of `shared`
    (shared / "run_1" / "exp" / "experiment.json").write_text("{}")
    res = give_back([shared / "run_1"], UID, GID, since=since, before=before, within=str(tmp_path))
    assert uid_of(shared) == 0 and uid_of(shared.parent) == 0 and str(shared) not in res.changed
    assert {uid_of(shared / "run_1"), uid_of(shared / "run_1" / "exp"), uid_of(shared / "run_1" / "exp" / "experiment.json")} == {UID}
    # without a snapshot no folder at all is given: only `since` cannot tell a new folder from an old one
    since = time.time()
    (shared / "run_2").mkdir()
    (shared / "run_2" / "f").write_text("x")
    res = give_back([shared / "run_2"], UID, GID, since=since, within=str(tmp_path))
    assert uid_of(shared) == 0 and uid_of(shared / "run_2") == 0 and uid_of(shared / "run_2" / "f") == UID


def test_a_link_in_the_path_does_not_hand_over_the_folder_it_leads_to(tmp_path):
    home, rootdir = tmp_path / "home", tmp_path / "rootdir"  # rootdir stands for /root
    home.mkdir()
    rootdir.mkdir()
    os.chown(home, UID, GID)
    (home / "x").symlink_to(tmp_path)  # ln -s / ~/x
    os.lchown(home / "x", UID, GID)
    run = home / "x" / "rootdir" / "run_1"
    before = snapshot([run])
    since = time.time()
    run.mkdir()
    (run / "summary.csv").write_text("a\n")
    res = give_back([run], UID, GID, since=since, before=before, within=str(home))
    assert uid_of(rootdir) == 0 and str(home / "x" / "rootdir") not in res.changed
    res = give_back([run], UID, GID, since=since, within=str(home))  # no snapshot: still not rootdir
    assert uid_of(rootdir) == 0


def test_a_hard_link_to_a_root_file_is_not_given_and_links_are_changed_only_where_safe(tmp_path):
    victim = tmp_path / "shadow"
    victim.write_text("root's")
    run = tmp_path / "run"
    before = snapshot([run])
    run.mkdir()
    os.link(victim, run / "training.log")  # where protected_hardlinks is 0, or a file the user may write
    (run / "new").mkdir()
    (run / "new" / "to_victim").symlink_to(victim)  # a link root made in a folder only root may write
    user_dir = run / "theirs"
    user_dir.mkdir()
    os.chown(user_dir, UID, GID)
    (user_dir / "link").symlink_to(victim)  # a root-owned link in a folder the user can swap names in
    res = give_back([run], UID, GID, before=before)
    assert uid_of(victim) == 0 and uid_of(run / "training.log") == 0
    assert any(p == str(run / "training.log") and "2 links" in why for p, why in res.failed)
    assert uid_of(run / "new" / "to_victim") == UID and uid_of(victim) == 0
    assert uid_of(user_dir / "link") == 0
    assert uid_of(run) == UID and uid_of(run / "new") == UID
