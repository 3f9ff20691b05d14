"""core.safefs: writes as root on a user's behalf never go through links, never take over files
they did not create, and give back only what they created; reads never block on a FIFO."""
from __future__ import annotations

import os
import threading

import pytest

from core.safefs import NotRegularFile, Owner, SafeTree, read_regular

UID = GID = 54321
as_root = pytest.mark.skipif(os.getuid() != 0, reason="giving files to another user needs root")


@pytest.fixture
def victim(tmp_path):
    """A root-only file and folder of the test's own, standing for root's files."""
    secret = tmp_path / "rootonly" / "profile"
    secret.parent.mkdir()
    secret.write_text("root's\n")
    os.chmod(secret.parent, 0o700)
    return secret


def owner_of(path) -> int:
    return os.lstat(path).st_uid


@as_root
def test_a_planted_link_at_a_file_name_is_refused_and_its_target_untouched(tmp_path, victim):
    (tmp_path / "run" / "exp").mkdir(parents=True)
    (tmp_path / "run" / "exp" / "training.log").symlink_to(victim)
    lines = []
    tree = SafeTree(tmp_path / "run", Owner(UID, GID), say=lines.append)
    assert tree.write_new("exp/training.log", b"chosen by the user\n") is False
    assert tree.open_new("exp/training.log") is None
    assert victim.read_text() == "root's\n" and owner_of(victim) == 0
    os.unlink(tmp_path / "run" / "exp" / "training.log")
    os.link(victim, tmp_path / "run" / "exp" / "training.log")  # a hard link to root's file
    assert tree.write_new("exp/training.log", b"chosen by the user\n") is False
    assert victim.read_text() == "root's\n" and owner_of(victim) == 0
    assert len(lines) == 3 and "training.log" in lines[0] and "\n" not in lines[0]


@as_root
def test_a_folder_linked_to_a_root_folder_is_not_written_into(tmp_path, victim):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "exp_001").symlink_to(victim.parent)
    tree = SafeTree(tmp_path / "run", Owner(UID, GID), say=lambda _: None)
    assert tree.write_new("exp_001/experiment.json", b"{}") is False
    assert tree.mkdirs("exp_001/sub") is False
    assert tree.replace("exp_001/experiment.json", b"{}") is False
    assert sorted(os.listdir(victim.parent)) == ["profile"] and owner_of(victim.parent) == 0


@as_root
def test_replace_swaps_the_name_never_writes_through_a_planted_link(tmp_path, victim):
    tree = SafeTree(tmp_path / "run", Owner(UID, GID))
    (tmp_path / "run" / "summary.csv").symlink_to(victim)
    assert tree.replace("summary.csv", b"a,b\n") is True
    assert victim.read_text() == "root's\n" and owner_of(victim) == 0
    assert (tmp_path / "run" / "summary.csv").read_bytes() == b"a,b\n"
    assert not os.path.islink(tmp_path / "run" / "summary.csv") and owner_of(tmp_path / "run" / "summary.csv") == UID
    assert [n for n in os.listdir(tmp_path / "run") if n.endswith(".tmp")] == []


@as_root
def test_appends_only_to_a_file_this_tree_created(tmp_path, victim):
    run = tmp_path / "run"
    tree = SafeTree(run, Owner(UID, GID), say=lambda _: None)
    f = tree.append_own("journal.jsonl")
    f.write(b"one\n")
    f.close()
    f = tree.append_own("journal.jsonl")  # created by this tree: appended to
    f.write(b"two\n")
    f.close()
    assert (run / "journal.jsonl").read_bytes() == b"one\ntwo\n"
    later = SafeTree(run, Owner(UID, GID), say=lambda _: None)  # a --resume: another run
    assert later.append_own("journal.jsonl") is None
    os.unlink(run / "journal.jsonl")
    (run / "journal.jsonl").symlink_to(victim)
    assert later.append_own("journal.jsonl") is None and tree.append_own("journal.jsonl") is None
    os.unlink(run / "journal.jsonl")
    os.link(victim, run / "journal.jsonl")  # a hard link to root's file
    assert later.append_own("journal.jsonl") is None
    assert victim.read_text() == "root's\n" and owner_of(victim) == 0


@as_root
def test_gives_back_what_it_created_by_inode_never_a_folder_that_was_there(tmp_path, victim):
    results = tmp_path / "shared_results"  # a root-owned --results-dir that existed before
    results.mkdir()
    tree = SafeTree(results / "run_1", Owner(UID, GID))
    assert tree.write_new("exp/experiment.json", b"{}")
    assert owner_of(results) == 0
    assert {owner_of(p) for p in (results / "run_1", results / "run_1" / "exp", results / "run_1" / "exp" / "experiment.json")} == {UID}
    assert tree.given == [str(results / "run_1"), str(results / "run_1" / "exp"), str(results / "run_1" / "exp" / "experiment.json")]
    again = SafeTree(tmp_path / "new" / "deeper", Owner(UID, GID))  # missing parents made on the way are ours
    assert owner_of(tmp_path / "new") == UID and owner_of(tmp_path) == 0 and again.created[0].relpath == str(tmp_path / "new")


@as_root
def test_held_give_back_refuses_a_hard_link_and_a_replaced_entry(tmp_path, victim):
    lines = []
    tree = SafeTree(tmp_path / "run", Owner(UID, GID), hold=True, say=lines.append)
    assert tree.write_new("a.txt", b"a") and tree.write_new("b.txt", b"b") and tree.write_new("c.txt", b"c")
    os.link(tmp_path / "run" / "a.txt", tmp_path / "a_twin")  # a.txt now has two links
    os.unlink(tmp_path / "run" / "b.txt")
    os.link(victim, tmp_path / "run" / "b.txt")  # b.txt is now root's file
    given = tree.give_back()
    assert str(tmp_path / "run" / "c.txt") in given and owner_of(tmp_path / "run" / "c.txt") == UID
    assert owner_of(tmp_path / "run" / "a.txt") == 0 and owner_of(victim) == 0
    assert any("2 links" in x for x in lines) and any("replaced" in x for x in lines)
    assert tree.give_back() == []  # nothing left to give, nothing given twice


@as_root
def test_the_way_to_the_root_follows_only_links_root_owns(tmp_path, victim):
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, UID, GID)
    os.symlink(victim.parent, home / "x")  # ln -s <root's folder> ~/x, the link owned by the user
    os.lchown(home / "x", UID, GID)
    lines = []
    tree = SafeTree(home / "x" / "results", Owner(UID, GID), say=lines.append)
    assert tree.fd is None and not tree.write_new("run.json", b"{}")
    assert sorted(os.listdir(victim.parent)) == ["profile"] and owner_of(victim.parent) == 0
    assert "link owned by uid 54321" in lines[0] and str(victim.parent) in lines[0]
    os.symlink(tmp_path / "real", tmp_path / "rootlink")  # a link root made is followed
    (tmp_path / "real").mkdir()
    tree = SafeTree(tmp_path / "rootlink" / "results", Owner(UID, GID))
    assert tree.write_new("x", b"1") and (tmp_path / "real" / "results" / "x").read_bytes() == b"1"
    assert SafeTree(home / "x" / "results", None).fd is not None  # acting for nobody: an ordinary path


def test_read_regular_refuses_fifos_and_devices_without_blocking_and_is_bounded(tmp_path):
    fifo = tmp_path / "refs_main"
    os.mkfifo(fifo)
    done = []
    t = threading.Thread(target=lambda: done.append(_refused(fifo)), daemon=True)
    t.start()
    t.join(10)
    assert done == [True]
    assert _refused("/dev/zero") and _refused(tmp_path)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 10000)
    assert read_regular(str(big), limit=100) == b"x" * 100
    (tmp_path / "link").symlink_to(big)
    assert read_regular(str(tmp_path / "link"), limit=3) == b"xxx"
    with pytest.raises(OSError):
        read_regular(str(tmp_path / "link"), follow=False)


def _refused(path) -> bool:
    try:
        read_regular(str(path))
    except NotRegularFile:
        return True
    return False


def test_paths_leaving_the_tree_are_a_programming_error(tmp_path):
    tree = SafeTree(tmp_path / "t")
    for bad in ("../x", "/etc/x", "a/../../x"):
        with pytest.raises(ValueError):
            tree.write_new(bad, b"")
