"""runner.results as root: the journal is never appended to unless this run created it, is fsync'ed
per event and survives kill -9; records are written through the run's SafeTree; reads never hang."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from core.safefs import Owner, SafeTree
from runner.results import Journal, journal_state, read_json, write_json, write_summary

ROOT = Path(__file__).resolve().parents[1]
UID = GID = 54321


@pytest.fixture
def victim(tmp_path):
    """Stands for root's shell profile: a root-owned file of the test's own."""
    p = tmp_path / "root_profile"
    p.write_text("# root's profile\n")
    return p


def test_resume_never_appends_to_a_journal_it_did_not_create(tmp_path, victim):
    run = tmp_path / "run_1"
    run.mkdir()
    j = Journal(str(run / "journal.jsonl"))
    j.write("experiment-end", experiment_id="a", status="passed")
    j.close()
    os.unlink(run / "journal.jsonl")
    (run / "journal.jsonl").symlink_to(victim)  # planted between the crash and the --resume
    j = Journal(str(run / "journal.jsonl"))
    j.write("run-resume", note="touch /tmp/pwned")
    j.close()
    assert victim.read_text() == "# root's profile\n"
    assert j.path == str(run / "journal.2.jsonl")
    os.unlink(run / "journal.jsonl")
    with open(run / "journal.jsonl", "w") as f:  # a real first segment, and a later resume
        f.write('{"event": "experiment-end", "experiment_id": "a", "status": "passed"}\n')
    Journal(str(run / "journal.jsonl")).close()
    assert os.path.exists(run / "journal.3.jsonl")
    events = Journal.read(str(run / "journal.jsonl"))
    assert [e["event"] for e in events] == ["experiment-end", "run-resume"]


def test_each_event_is_fsynced_on_the_journal_descriptor(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    j = Journal(str(tmp_path / "journal.jsonl"))
    synced.clear()
    for i in range(3):
        j.write("attempt-start", experiment_id="a", attempt=i)
        assert synced and synced[-1] == j._f.fileno(), synced
        synced.clear()
    j.close()


def test_every_event_written_before_kill_9_is_in_the_journal(tmp_path):
    code = ("import os, signal, sys; sys.path.insert(0, sys.argv[1]); from runner.results import Journal\n"
            "j = Journal(sys.argv[2])\n"
            "for i in range(200): j.write('attempt-end', experiment_id=f'e{i}', record={'attempt': 1})\n"
            "os.kill(os.getpid(), signal.SIGKILL)")
    p = subprocess.run([sys.executable, "-c", code, str(ROOT), str(tmp_path / "journal.jsonl")], timeout=60)
    assert p.returncode == -signal.SIGKILL
    st = journal_state(Journal.read(str(tmp_path / "journal.jsonl")))
    assert len(st) == 200 and all(s["attempts"] == [{"attempt": 1}] for s in st.values())


@pytest.mark.skipif(os.getuid() != 0, reason="giving files to another user needs root")
def test_records_go_through_the_tree_never_through_planted_links(tmp_path, victim):
    rootdir = tmp_path / "rootdir"
    rootdir.mkdir()
    tree = SafeTree(tmp_path / "run_1", Owner(UID, GID), say=lambda _: None)
    (tmp_path / "run_1" / "exp_002").symlink_to(rootdir)  # the next experiment's folder
    assert write_json(str(tmp_path / "run_1" / "exp_002" / "experiment.json"), {"a": 1}, tree) is False
    assert os.listdir(rootdir) == []
    (tmp_path / "run_1" / "summary.csv").symlink_to(victim)
    assert write_summary(str(tmp_path / "run_1" / "summary.csv"), [], tree) is True
    assert victim.read_text() == "# root's profile\n" and victim.stat().st_uid == 0
    assert os.stat(tmp_path / "run_1" / "summary.csv").st_uid == UID
    assert write_json(str(tmp_path / "run_1" / "exp_001" / "experiment.json"), {"a": 1}, tree)
    assert read_json(str(tmp_path / "run_1" / "exp_001" / "experiment.json")) == {"a": 1}
    j = Journal(str(tmp_path / "run_1" / "journal.jsonl"), tree)
    j.write("run-start")
    j.close()
    assert os.stat(tmp_path / "run_1" / "journal.jsonl").st_uid == UID


def test_fifos_and_malformed_journals_neither_hang_nor_crash(tmp_path):
    os.mkfifo(tmp_path / "experiment.json")
    os.mkfifo(tmp_path / "journal.jsonl")
    (tmp_path / "journal.2.jsonl").write_text(
        '{"event": "attempt-end", "experiment_id": "a", "record": [1]}\n{"event": "experiment-end", "experiment_id": ["x"]}\n'
        '{"event": "experiment-end", "experiment_id": "b", "status": {"x": 1}}\n' + "[" * 100000 + "\n")
    out = []
    t = threading.Thread(target=lambda: out.append((read_json(str(tmp_path / "experiment.json")),
                                                    journal_state(Journal.read(str(tmp_path / "journal.jsonl"))))),
                         daemon=True)
    t.start()
    t.join(30)
    assert out == [(None, {"a": {"status": None, "attempts": [], "open_attempt": None},
                           "b": {"status": None, "attempts": [], "open_attempt": None}})]


def test_the_log_tail_is_never_read_through_a_link(tmp_path):
    from runner.logtail import read_tail

    secret = tmp_path / "shadow"  # stands for a root-only file a planted log link points to
    secret.write_text("root:$6$secret-hash:19000:0:99999:7:::\n")
    (tmp_path / "training.log").symlink_to(secret)
    assert read_tail(str(tmp_path / "training.log")) == []
    (tmp_path / "real.log").write_text("Traceback\nValueError: x\n")
    assert read_tail(str(tmp_path / "real.log"))[-2] == "ValueError: x"


def test_atomic_writes_never_go_through_a_link_planted_at_the_temporary_name(tmp_path, victim):
    from core.memo import JsonMemo, write_atomic

    target = tmp_path / "memo.json"
    tmp = f"{target}.{os.getpid()}.{threading.get_ident()}.tmp"
    os.symlink(victim, tmp)  # the user guessed the name (pid and thread id)
    with pytest.raises(FileExistsError):
        write_atomic(str(target), b"{}")
    memo = JsonMemo(str(target))
    memo.put("k", "v")
    memo.save()  # a memo that cannot be written safely is skipped
    assert victim.read_text() == "# root's profile\n" and os.path.islink(tmp) and not target.exists()
