"""mutation-run on a real one-node Slurm cluster (tests/support/slurm.py brings it up)."""
from __future__ import annotations

import os
import subprocess

import pytest

from tests.support import slurm as slurm_support


@pytest.fixture(scope="session")
def cluster():
    """The test cluster, up for the session; the daemons this session started are stopped at its end."""
    reason = slurm_support.skip_reason()
    if reason:
        pytest.skip(reason)
    c = slurm_support.Cluster()
    try:
        c.up()
    except RuntimeError as e:
        c.down()
        pytest.skip(str(e))
    old = {k: os.environ.get(k) for k in c.env()}
    os.environ.update(c.env())
    yield c
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    c.down()


def test_bring_up_is_idempotent_and_runs_a_job(cluster, tmp_path):
    again = slurm_support.Cluster().up()
    assert again.started == {}  # everything was already up: nothing started twice
    out = tmp_path / "out.txt"
    p = subprocess.run(["sbatch", "--wait", "-o", str(out), "--wrap", "echo ran-on-$SLURMD_NODENAME"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert out.read_text().strip() == f"ran-on-{cluster.hostname}"
