"""The check registry. A check is a plain function `check(ctx) -> Iterable[Finding] | None`.

Adding a check: write the function in `checks/<group>.py`, add one line below, add one test.
Functions are named as "module:function" strings so that importing the registry stays cheap.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    """One registered check: its group, a short name, a title for the terminal, and where it lives."""

    group: str
    name: str
    title: str
    target: str  # "module:function"

    def load(self):
        import importlib

        module, _, func = self.target.partition(":")
        return getattr(importlib.import_module(module), func)


CHECKS = (
    Check("settings", "lint", "Settings file", "checks.settings:check_lint"),
    Check("settings", "values", "Values the runner will use", "checks.settings:check_values"),
    Check("settings", "repos", "Repo folders and train scripts", "checks.repo:check_repos"),
    Check("settings", "needs-declared", "Model needs declared", "checks.settings:check_needs_declared"),
    Check("settings", "history", "Deduplication history (historical_csvs)", "checks.history:check_history"),
    Check("settings", "discovery", "Needs discovered in the repos' code", "checks.discovery:check_discovery"),
    Check("cache", "needs", "Weights, data and interpreters in the launch context", "checks.cache:check_needs"),
    Check("cache", "leftovers", "Interrupted downloads", "checks.cache:check_leftovers"),
    Check("cache", "locked", "Weights unchanged since the recorded runs (needs lock)", "checks.needslock:check_locked_weights"),
    Check("cache", "deep", "Models load offline (--deep)", "checks.cache:check_deep_load"),
    Check("env", "propagation", "What the launched process inherits", "checks.env:check_propagation"),
    Check("env", "offline", "Offline policy", "checks.env:check_offline_policy"),
    Check("network", "hubs", "Hubs reachable for what is not cached", "checks.network:check_network"),
    Check("system", "gpu", "GPU and stray GPU processes", "checks.system.gpu:check_gpu"),
    Check("system", "interpreters", "Repo interpreters and their torch", "checks.system.interpreters:check_interpreters"),
    Check("system", "energy", "Energy counters (perf/RAPL)", "checks.system.energy:check_energy"),
    Check("system", "governor", "CPU governor", "checks.system.governor:check_governor"),
    Check("system", "disk", "Disk space and inodes", "checks.system.disk:check_disk"),
    Check("system", "ownership", "Files left root-owned", "checks.system.ownership:check_ownership"),
    Check("system", "mounts", "Datasets on mounted filesystems", "checks.system.mounts:check_dataset_mounts"),
    Check("system", "cluster", "Slurm cluster: commands, partition, shared folders", "checks.cluster:check_cluster"),
)
