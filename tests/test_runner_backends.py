"""The backend seam: the registry, and the attempt loop driving a backend it knows nothing about
(a local backend that records every call, over real processes and signals)."""
import os
import sys
import textwrap

import pytest

from runner import backends
from runner.backends.base import Backend, JobSpec
from runner.backends.local import LocalBackend
from runner.batch import Options
from runner.execute import AttemptLoop, StopRequest
from runner.results import Journal


class Recording(LocalBackend):
    """The local backend, noting each call the attempt loop makes."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def start(self, spec, stream=None):
        self.calls.append("start")
        handle = super().start(spec, stream)
        for name in ("terminate", "kill", "cleanup"):
            setattr(handle, name, self._noting(name, getattr(handle, name)))
        return handle

    def _noting(self, name, method):
        def call():
            self.calls.append(name)
            return method()
        return call


def script(tmp_path, body):
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(body))
    return (sys.executable, str(path))


def loop(tmp_path, backend, argv, **opts):
    opt = Options(retry_delay=0, **opts)
    spec = JobSpec(argv, str(tmp_path), dict(os.environ, MUTATION_RUN_ID="run_t/e1"), str(tmp_path / "training.log"),
                   "run_t/e1", grace=opt.grace)
    journal = Journal(str(tmp_path / "journal.jsonl"))
    try:
        return AttemptLoop(backend, spec, background=None, options=opt, stop=StopRequest(), journal=journal,
                           say=lambda *a, **k: None, experiment_id="e1").run()
    finally:
        journal.close()
        watchdog = backend.watchdog
        backend.close()
        assert watchdog is None or watchdog.returncode == 0  # told goodbye, it ended at once


def test_every_registered_backend_loads_and_is_a_backend():
    assert backends.DEFAULT in backends.names()
    for name in backends.names():
        b = backends.get(name)
        assert isinstance(b, Backend) and b.name == name
    with pytest.raises(KeyError):
        backends.get("nope")


def test_a_timeout_terminates_then_kills_after_the_grace_and_cleans_up(tmp_path):
    argv = script(tmp_path, """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("started", flush=True)
        time.sleep(60)
    """)
    b = Recording()
    done = loop(tmp_path, b, argv, timeout=1.0, grace=0.5, max_retries=0)
    assert b.calls == ["start", "terminate", "kill", "cleanup"]
    assert done.status == "failed" and done.failure.startswith("timed out after 1 s")
    (rec,) = done.records
    assert rec["timed_out"] is True and rec["signal"] == "SIGKILL"
    assert rec["job"]["backend"] == "local" and rec["job"]["pid"] > 0
    assert (tmp_path / "training.log").read_text() == "started\n"


def test_a_transient_failure_is_retried_through_the_backend_and_each_log_kept(tmp_path):
    argv = script(tmp_path, """
        print("httpx.ConnectError: [Errno 104] Connection reset by peer", flush=True)
        raise SystemExit(1)
    """)
    b = Recording()
    done = loop(tmp_path, b, argv, max_retries=2)
    assert b.calls == ["start", "cleanup"] * 3
    assert [r["log"] for r in done.records] == ["training.attempt1.log", "training.attempt2.log", "training.log"]
    assert [bool(r["retry_reason"]) for r in done.records] == [True, True, False]


def test_a_job_that_cannot_start_is_one_attempt_with_the_reason_in_its_log(tmp_path):
    b = Recording()
    done = loop(tmp_path, b, (str(tmp_path / "missing.sh"),), max_retries=2)
    assert b.calls == ["start"] and done.status == "failed"
    assert done.records[0]["exit_code"] == 127 and "cannot start" in done.failure
    assert "cannot start" in (tmp_path / "training.log").read_text()


def test_the_watchdog_stops_only_what_is_still_listed_and_nothing_after_a_goodbye():
    from runner.backends.watchdog import serve

    lines = ["job 100 5 2 run_t/a\n", "job 200 6 1 run_t/b\n", "done 100\n", "job x y z w\n"]
    assert serve(iter(lines)) == {200: (6, 1.0, "run_t/b")}
    assert serve(iter(lines + ["bye\n"])) == {}


def test_a_job_announced_before_its_start_is_stopped_by_its_token_when_the_runner_dies_before_confirming_it(tmp_path):
    # the runner may die between starting a job and naming its process group to the watchdog:
    # the announcement made before the start is enough for the watchdog to stop it
    import subprocess
    from runner.backends.base import TOKEN_VAR
    from runner.backends.watchdog import serve, stop_all

    lines = ["want 0 0.2 run_t/a\n", "want 0 1 run_t/b\n", "drop run_t/b\n"]
    jobs = serve(iter(lines))
    assert list(jobs.values()) == [(0, 0.2, "run_t/a")] and all(k < 0 for k in jobs)
    env = dict(os.environ, **{TOKEN_VAR: "run_t/a"})
    job = subprocess.Popen(["bash", "-c", 'trap "" TERM; while true; do sleep 0.1; done'], env=env, start_new_session=True)
    other = subprocess.Popen(["sleep", "60"], env=dict(os.environ, **{TOKEN_VAR: "run_t/b"}), start_new_session=True)
    try:
        stop_all(jobs)
        assert job.wait(timeout=10) == -9  # it ignored SIGTERM: killed after the grace
        assert other.poll() is None  # dropped: its start failed, what carries its token is not this job's
    finally:
        for p in (job, other):
            p.kill()
            p.wait()
    assert serve(iter(lines + ["job 300 7 0.2 run_t/a\n"])) == {300: (7, 0.2, "run_t/a")}  # confirmed: one entry
