"""Learning tests (minutes each): run with `pytest -m slow`."""

import re

import pytest
from conftest import REPO_DIR, check_ok, run_mpi


@pytest.mark.slow
def test_cartpole_mpirun_two_ranks_solves(tmp_path):
    """`mpirun -np 2 python scripts/train.py --env CartPole-v1` on the shipped config reaches mean eval >= 475."""
    result = check_ok(
        run_mpi(
            [str(REPO_DIR / "scripts" / "train.py"), "--env", "CartPole-v1", "--seed", "0", "-f", str(tmp_path),
             "--verbose", "0"],
            timeout=900,
        )
    )  # fmt: skip
    match = re.search(r"Final evaluation over 20 episodes: mean return ([\d.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) >= 475, result.stdout
