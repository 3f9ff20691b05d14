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


# Each rule alone: the exception rules through classify_exception only, the text rules through
# text_rule only, so that breaking one rule fails its own case even where the other would cover it.
EXCEPTION_RULES = [
    ("KeyboardInterrupt", "", "interrupted"),
    ("RuntimeError", "CUDA out of memory. Tried to allocate 192.00 MiB", "cuda.oom"),
    ("torch.OutOfMemoryError", "CUDA out of memory.", "cuda.oom"),
    ("RuntimeError", "DataLoader worker (pid 4321) is killed by signal: Killed.", "killed"),
    ("RuntimeError", "CUDA error: no kernel image is available for execution on the device", "cuda.arch"),
    ("AssertionError", "Torch not compiled with CUDA enabled", "cuda.unavailable"),
    ("RuntimeError", "Found no NVIDIA driver on your system.", "cuda.unavailable"),
    ("huggingface_hub.errors.RepositoryNotFoundError", "401 Client Error.", "hub.not-found"),
    ("huggingface_hub.errors.LocalEntryNotFoundError", "cannot find the requested files in the local cache",
     "hub.cache-miss"),
    ("httpx.ProxyError", "407 Proxy Authentication Required", "hub.proxy"),
    ("httpx.ConnectTimeout", "_ssl.c:1000: The handshake operation timed out", "hub.timeout"),
    ("httpcore.ConnectError", "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed", "hub.tls"),
    ("httpx.ConnectError", "[Errno 104] Connection reset by peer", "hub.connection"),
    ("requests.exceptions.HTTPError", "503 Server Error: Service Unavailable for url: https://huggingface.co/x",
     "hub.connection"),
    ("urllib.error.URLError", "<urlopen error [Errno 111] Connection refused>", "torchhub.download"),
    ("ConnectionRefusedError", "[Errno 111] Connection refused", "network.connection"),
    ("ModuleNotFoundError", "No module named 'scipy'", "python.module-missing"),
    ("ImportError", "cannot import name 'x' from 'y'", "python.module-missing"),
    ("OSError", "[Errno 28] No space left on device", "disk.full"),
    ("PermissionError", "[Errno 13] Permission denied: '/srv/results/x'", "permission.denied"),
    ("FileNotFoundError", "[Errno 2] No such file or directory: '/opt/envs/reid/bin/python'",
     "python.interpreter-missing"),
    ("FileNotFoundError", "[Errno 2] No such file or directory: 'data/train.csv'", "data.missing"),
    ("RuntimeError", "Dataset not found or corrupted. You can use download=True to download it", "data.missing"),
    ("json.decoder.JSONDecodeError", "Expecting value: line 1 column 1 (char 0)", "config.error"),
    ("KeyError", "'repo'", "config.error"),
    ("ZeroDivisionError", "division by zero", None),
]

TEXT_RULES = [
    ("ERROR: Python not found at /home/u/miniconda3/envs/reid/bin/python", "python.interpreter-missing"),
    ("bash: line 1: conda: command not found", "python.interpreter-missing"),
    ("event syntax error: 'power/energy-pkg/'", "perf.unavailable"),
    ("bash: line 1: perf: command not found", "perf.unavailable"),
    ("ERROR: CUDA out of memory while training", "cuda.oom"),
    ("WARNING: no kernel image is available for execution on the device", "cuda.arch"),
    ("WARNING: Found no NVIDIA driver on your system", "cuda.unavailable"),
    ("Killed", "killed"),
    ("./train.sh: line 12: 4242 Killed                  python train.py", "killed"),
    ("Terminated", "interrupted"),
    ("train.py: error: unrecognized arguments: --bogus 1", "config.error"),
    ("train.py: error: argument --lr: invalid float value: 'fast'", "config.error"),
    ("WARNING: cannot find the requested files in the local cache", "hub.cache-miss"),
    ("tee: results.log: No space left on device", "disk.full"),
    ("./train.sh: line 3: results/out.txt: Permission denied", "permission.denied"),
    ("cat: data/train.csv: No such file or directory", "data.missing"),
]


@pytest.mark.parametrize("etype, msg, cause", EXCEPTION_RULES)
def test_each_exception_rule_alone(etype, msg, cause):
    got = cat.classify_exception(failures.ExceptionRecord(etype, msg, 0, None))
    assert (got[0] if got else None) == cause


@pytest.mark.parametrize("line, cause", TEXT_RULES)
def test_each_text_rule_alone(line, cause):
    assert cat.looks_like_exception(line) is None or cat.classify_exception(
        failures.ExceptionRecord(*cat.looks_like_exception(line), 0, None)) is None
    assert cat.text_rule(line) == cause


def test_every_text_rule_and_every_exception_cause_has_its_case():
    assert {cid for cid, _ in cat._TEXT_RULES} == {c for _, c in TEXT_RULES}
    from_exceptions = {c for _, _, c in EXCEPTION_RULES if c}
    assert from_exceptions >= set(cat.IDS) - {"hub.cache-miss.sudo-home", "cuda.oom.foreign-process", "perf.unavailable",
                                              "timeout", "false-success", "metrics.not-extracted", "unknown"}


BAR = "".join(f" {k}/9000 [loss=0.{k:04d}]" for k in range(9000))  # a long line: a progress bar without newlines


@pytest.mark.parametrize("line, cause", [
    ("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB" + BAR, "cuda.oom"),  # a message, then a bar
    (BAR + " OSError: [Errno 28] No space left on device", "disk.full"),  # a bar, then the message
    (BAR[:3000] + " error: argument --lr: invalid float value: 'x' " + BAR[:3000], "config.error"),  # not long
    # Of a long line only the start and the end are read: what only its middle says is not looked for.
    (BAR[:5000] + " No space left on device " + BAR[:5000], None),
])
def test_a_long_line_is_read_at_its_start_and_its_end(line, cause):
    assert cat.classify_text(line) == cause


@pytest.mark.parametrize("near, far", [
    ("dataset {} not found", "dataset {} not found"),
    ("error: argument --lr{}: invalid float value: 'x'", "error: argument --lr{}: invalid float value: 'x'"),
    ("event syntax error: {}'power/energy-pkg/'", "event syntax error: {}'power/energy-pkg/'"),
])
def test_the_words_of_a_message_are_looked_for_close_together(near, far):
    # An unbounded gap (`.*`) between two words makes a search quadratic in a long line's length.
    def cause(line):
        got = cat.classify_text(line) or cat.classify_exception(failures.ExceptionRecord("RuntimeError", line, 0, None))
        return got[0] if isinstance(got, tuple) else got

    assert cause(near.format(" x" * 20)) is not None
    assert cause(far.format(" x" * 200)) is None
