"""One failure catalogue: the runner's retry decision and explain's cause come from the same rules."""
from __future__ import annotations

import pytest

from core import failures
from core.failures import catalogue as cat
from runner.logtail import classify

TB = "Traceback (most recent call last):\n  File \"train.py\", line 3, in <module>\n    main()\n"


def test_cause_ids_are_the_catalogue_and_every_rule_has_a_short_reason():
    ids = failures.cause_ids()
    assert len(ids) == len(set(ids)) and "unknown" in ids and "metrics.not-extracted" in ids
    assert all(failures.rule(i).short for i in ids)
    assert not failures.is_transient(None) and not failures.is_transient("no.such.cause")


@pytest.mark.parametrize("exc, cause, transient", [
    ("AssertionError: Torch not compiled with CUDA enabled", "cuda.unavailable", False),
    ("RuntimeError: CUDA out of memory. Tried to allocate 192.00 MiB", "cuda.oom", False),
    ("httpx.ConnectTimeout: _ssl.c:1000: The handshake operation timed out", "hub.timeout", True),
    ("httpx.ConnectError: [Errno 104] Connection reset by peer", "hub.connection", True),
    ("ConnectionRefusedError: [Errno 111] Connection refused", "network.connection", True),
    ("huggingface_hub.errors.LocalEntryNotFoundError: cannot find the requested files in the local cache",
     "hub.cache-miss", False),
    ("ModuleNotFoundError: No module named 'scipy'", "python.module-missing", False),
    ("KeyError: 'repo'", "config.error", False),
])
def test_runner_and_explain_agree(exc, cause, transient):
    lines = (TB + exc + "\n").splitlines()
    chain = failures.find_fatal(lines)
    assert failures.decisive(chain)[0] == cause
    got_transient, reason = classify(lines, 1, None, False)
    assert got_transient is transient
    assert reason.startswith(failures.rule(cause).short) and exc.split(":")[0] in reason


def test_a_shell_message_without_traceback_is_classified_by_the_text_rules():
    assert classify(["ERROR: Python not found at /opt/env/bin/python"], 1, None, False) == (
        False, "the interpreter or environment is missing: ERROR: Python not found at /opt/env/bin/python")
    assert classify(["step 3", "Killed"], 1, None, False)[0] is True
    assert classify(["step 3", "something odd"], 2, None, False) == (False, "exit code 2: something odd")
