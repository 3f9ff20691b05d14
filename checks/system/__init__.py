"""The `system` group: the machine the batch will run on.

GPUs and the processes holding their memory (an orphan of an earlier batch holding 5.5 GB killed
half of the user's failed runs with CUDA out of memory), each repo's interpreter and whether its
torch supports this GPU, the perf RAPL energy counters, the CPU governor, disk space, files left
root-owned by earlier sudo runs, and datasets on filesystems that are not mounted.

Every check looks at the machine as the launched experiments will find it (the launch context's
PATH, user and caches) and reports to the invoking user with commands to copy.

One module per check, each registered by one line in checks/__init__.py; `common` holds what
they share.
"""
from checks.system.energy import energy_request  # noqa: F401 - the runner and the launch matrix ask it too
