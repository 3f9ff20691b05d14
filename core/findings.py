"""Every finding id the checks emit, declared once: its group, default status, and the explain cause
a run held back by it would have died of.

Ids are stable dotted names that renderers, JSON consumers and explain rely on. A declaration is an
exact id or a pattern with `*` for one dotted part or more (`system.cluster.*`). Explain turns a
record's `blocked_by` into a cause with `cause_for`; tests/test_findings_contract.py runs every
check and fails on an id declared nowhere, or a blocking id without a cause in the failure
catalogue (core.failures).

Adding a check's finding: one line in DECLARED.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Tuple

from core.vocab import ERROR, FAIL, OK, WARN


@dataclass(frozen=True)
class Declared:
    """One finding id (or id pattern) with its group, default status and explain cause.

    `cause` is the failure catalogue's id of what a run blocked by this finding would die of (None:
    the finding never blocks, or nothing in the catalogue says what follows); `note` says why a
    blocking finding has no cause yet.
    """

    id: str
    group: str
    status: str
    cause: Optional[str] = None
    note: str = ""


DECLARED: Tuple[Declared, ...] = (
    # settings: the file mutation.py would read, and what it would do with it
    Declared("settings.missing-key", "settings", FAIL, "config.error"),
    Declared("settings.unknown-repo", "settings", FAIL, "config.error"),
    Declared("settings.unknown-model", "settings", FAIL, "config.error"),
    Declared("settings.bad-value", "settings", FAIL, "config.error"),
    Declared("settings.bad-entry", "settings", FAIL, "config.error"),
    Declared("settings.unknown-mode", "settings", FAIL, "config.error"),
    Declared("settings.repository-key", "settings", FAIL, "config.error"),
    Declared("settings.top-level-list", "settings", WARN, "config.error"),
    Declared("settings.empty", "settings", WARN),
    Declared("settings.ignored-key", "settings", WARN),
    Declared("settings.unknown-hyperparameter", "settings", WARN),
    Declared("settings.ignored-hyperparameters", "settings", WARN),
    Declared("settings.not-an-experiment", "settings", OK),
    Declared("settings.no-needs-declared", "settings", OK),
    Declared("settings.history-missing", "settings", WARN),
    Declared("settings.history-unreadable", "settings", WARN),
    Declared("settings.repo.missing", "settings", FAIL, "config.error"),
    Declared("settings.repo.unreachable", "settings", FAIL, "config.error"),
    Declared("settings.train-script.missing", "settings", FAIL, "config.error"),
    Declared("settings.train-script.folder", "settings", FAIL, "config.error"),
    Declared("settings.train-script.not-executable", "settings", FAIL, "permission.denied"),
    Declared("settings.train-script.empty", "settings", FAIL, "false-success"),
    Declared("settings.discovery.unresolved", "settings", WARN),
    Declared("settings.discovery.unattributed", "settings", WARN),
    # cache: each need where the launched process looks
    Declared("cache.*.present", "cache", OK),
    Declared("cache.hub.missing", "cache", FAIL, "hub.cache-miss"),
    Declared("cache.hub.broken", "cache", FAIL, "hub.cache-miss"),
    Declared("cache.torchhub.missing", "cache", FAIL, "torchhub.download"),
    Declared("cache.torchhub.broken", "cache", FAIL, "torchhub.download"),
    Declared("cache.path.missing", "cache", FAIL, "data.missing"),
    Declared("cache.path.broken", "cache", FAIL, "data.missing"),
    Declared("cache.python.missing", "cache", FAIL, "python.interpreter-missing"),
    Declared("cache.python.broken", "cache", FAIL, "python.interpreter-missing"),
    Declared("cache.unresolved", "cache", FAIL, "config.error"),
    Declared("cache.permission", "cache", FAIL, "permission.denied"),
    Declared("cache.unreadable", "cache", WARN),
    Declared("cache.leftovers", "cache", WARN),
    Declared("cache.deep.loaded", "cache", OK),
    Declared("cache.deep.load-failed", "cache", FAIL, "hub.cache-miss"),
    Declared("cache.lock.unreadable", "cache", WARN),
    Declared("cache.locked.changed", "cache", WARN, None,
             "weights that changed since the recorded runs are no failure; only --locked makes them a failure"),
    # env: what the launched process inherits
    Declared("env.home-moved", "env", WARN, "hub.cache-miss.sudo-home"),
    Declared("env.dropped", "env", WARN),
    Declared("env.changed", "env", WARN),
    Declared("env.kept", "env", OK),
    Declared("env.invoking-unknown", "env", WARN),
    Declared("env.python-changed", "env", WARN, "python.module-missing"),
    Declared("env.root-writes-user-cache", "env", WARN, "permission.denied"),
    Declared("env.sudo.refused", "env", FAIL, "permission.denied"),
    Declared("env.sudo.simulated", "env", OK),
    Declared("env.sudo.simulation-differs", "env", WARN),
    Declared("env.sudo.inspected-as", "env", OK),
    Declared("env.sudo.not-inspected-as", "env", OK),
    Declared("env.offline.safe", "env", OK),
    Declared("env.offline.missing", "env", FAIL, "hub.cache-miss"),
    # network: one id per probe classification (core.netprobe.CLASSES)
    Declared("network.ok", "network", OK),
    Declared("network.offline", "network", OK),
    Declared("network.dns", "network", FAIL, "hub.connection"),
    Declared("network.refused", "network", FAIL, "hub.connection"),
    Declared("network.connect-timeout", "network", FAIL, "hub.timeout"),
    Declared("network.tls-timeout", "network", FAIL, "hub.timeout"),
    Declared("network.read-timeout", "network", FAIL, "hub.timeout"),
    Declared("network.tls-verify", "network", FAIL, "hub.tls"),
    Declared("network.proxy", "network", FAIL, "hub.proxy"),
    Declared("network.http-status", "network", FAIL, "hub.connection"),
    Declared("network.not-a-hub", "network", FAIL, "hub.connection"),
    # system: the machine
    Declared("system.gpu.present", "system", OK),
    Declared("system.gpu.process", "system", OK),
    Declared("system.gpu.none", "system", FAIL, "cuda.unavailable"),
    Declared("system.gpu.smi-failed", "system", WARN, "cuda.unavailable"),
    Declared("system.gpu.smi-not-on-path", "system", WARN),
    Declared("system.gpu.stray-process", "system", FAIL, "cuda.oom.foreign-process"),
    Declared("system.gpu.memory", "system", FAIL, "cuda.oom"),
    Declared("system.interpreter.ok", "system", OK),
    Declared("system.interpreter.missing", "system", FAIL, "python.interpreter-missing"),
    Declared("system.interpreter.broken", "system", FAIL, "python.interpreter-missing"),
    Declared("system.interpreter.timeout", "system", WARN),
    Declared("system.interpreter.no-torch", "system", FAIL, "python.module-missing"),
    Declared("system.interpreter.no-module", "system", FAIL, "python.module-missing"),
    Declared("system.interpreter.cpu-torch", "system", FAIL, "cuda.unavailable"),
    Declared("system.interpreter.driver", "system", FAIL, "cuda.unavailable"),
    Declared("system.interpreter.arch", "system", FAIL, "cuda.arch"),
    Declared("system.energy.ok", "system", OK),
    Declared("system.energy.*", "system", WARN, "perf.unavailable"),
    Declared("system.governor.*", "system", WARN),
    Declared("system.disk.ok", "system", OK),
    Declared("system.disk.low", "system", FAIL, "disk.full"),
    Declared("system.disk.inodes", "system", FAIL, "disk.full"),  # no free inode: ENOSPC too
    Declared("system.ownership.ok", "system", OK),
    Declared("system.ownership.root-owned", "system", FAIL, "permission.denied"),
    Declared("system.mount.ok", "system", OK),
    Declared("system.mount.missing", "system", FAIL, "data.missing"),
    Declared("system.mount.stale", "system", FAIL, "data.missing"),
    Declared("system.cluster.*", "system", FAIL, "config.error"),
    # any check: a crash is an error (the answer is unknown), never a cause
    Declared("*.crashed", "*", ERROR),
)


def _specificity(d: Declared) -> Tuple[int, int]:
    return (0 if "*" in d.id else 1, len(d.id.replace("*", "")))


@lru_cache(maxsize=None)
def declaration(finding_id: str) -> Optional[Declared]:
    """The declaration of `finding_id`: the exact one, else the most specific matching pattern."""
    hits = [d for d in DECLARED if d.id == finding_id or ("*" in d.id and fnmatch.fnmatchcase(finding_id, d.id))]
    return max(hits, key=_specificity) if hits else None


def cause_for(finding_id: str) -> Optional[str]:
    """The explain cause of a run held back by `finding_id` (None: undeclared, or no cause known)."""
    d = declaration(finding_id)
    return d.cause if d is not None else None
