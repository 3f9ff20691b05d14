"""The project's one vocabulary: finding statuses, verdicts, run and explain statuses, check groups,
and the version of every JSON document we write.

Every module that names a status imports it from here, so that the doctor, the runner and explain
cannot drift apart. Plain strings (they appear as such in JSON); no imports.
"""
from __future__ import annotations

FORMAT_VERSION = 1  # of the doctor's --json, explain's --json and the runner's run.json / experiment.json

# Finding statuses, from best to worst. "error" means a check crashed (so the answer is unknown).
OK, WARN, FAIL, ERROR = "ok", "warn", "fail", "error"
FINDING_STATUSES = (OK, WARN, FAIL, ERROR)
STATUS_ORDER = {OK: 0, WARN: 1, ERROR: 2, FAIL: 3}

# Verdicts of the doctor on one experiment: it may run, it is held back, or what it needs could not be established.
PASS, BLOCKED, UNVERIFIED = "pass", "blocked", "unverified"
VERDICTS = (PASS, BLOCKED, UNVERIFIED)

# What mutation-run records for one experiment.
PASSED, FAILED, INTERRUPTED = "passed", "failed", "interrupted"
RUN_STATUSES = (PASSED, FAILED, BLOCKED, INTERRUPTED)

# What explain says of one experiment it read back from a results folder.
SUCCEEDED, SUSPICIOUS = "succeeded", "suspicious"
EXPLAIN_STATUSES = (SUCCEEDED, FAILED, BLOCKED, SUSPICIOUS)

# Check groups, in report order.
GROUPS = ("settings", "cache", "env", "network", "system")
