"""
Issue 23, item 2 ("nothing hangs") and item 3's save-then-load on every rank: real ``mpirun -np 2`` jobs
(tests/mpi_scripts/hang_scenarios.py) that used to block forever must end within 30 s of reaching the call that can
never complete, with a message naming the rank and the collective; the ones that used to fail must work.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MPI_SCRIPTS, REPO_DIR, check_ok, mpirun_path, run_mpi

SCENARIOS = str(MPI_SCRIPTS / "hang_scenarios.py")
# The bound: the job ends within 30 s of the call that never completes.
END_WITHIN_S = 30.0
LEARN_CHECK = "the lockstep check of the ParallelDQN constructor / learn()"


def run_stuck(mode: str, folder: Path, env: dict | None = None, send_sigterm_after_s: float | None = None):
    """
    Start the job, note when rank 0 reports reaching the call that never completes, and return (exit code, seconds
    from there to the job's end, stderr). With ``send_sigterm_after_s``, SIGTERM goes to mpirun that long after.
    """
    command = [mpirun_path(), "-np", "2", sys.executable, SCENARIOS, mode, str(folder)]
    process = subprocess.Popen(
        command,
        cwd=REPO_DIR,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    reached_at = None
    assert process.stdout is not None
    deadline = time.monotonic() + 150
    for line in process.stdout:
        if '"reached"' in line:
            reached_at = time.monotonic()
            break
        if time.monotonic() > deadline:
            break
    if reached_at is not None and send_sigterm_after_s is not None:
        time.sleep(send_sigterm_after_s)
        process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=END_WITHIN_S + 60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        pytest.fail(f"{mode}: the job hung (killed after {END_WITHIN_S + 60} s)\nstderr:\n{stderr}")
    assert reached_at is not None, f"{mode}: the job never reached its call\nstderr:\n{stderr}"
    return process.returncode, time.monotonic() - reached_at, stderr


def rank_reports(folder: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(folder.glob("rank*.json"))]


def assert_ends_saying(mode: str, folder: Path, *phrases: str, **options) -> None:
    """The job of ``mode`` fails within END_WITHIN_S of reaching its call, and its stderr holds every phrase."""
    code, seconds, stderr = run_stuck(mode, folder, **options)
    assert code != 0, stderr
    assert seconds < END_WITHIN_S, stderr
    for phrase in phrases:
        assert phrase in stderr, f"{phrase!r} not in:\n{stderr}"


def test_item2_a_rank_that_leaves_ends_the_job_naming_it_and_the_collective(tmp_path):
    """Rank 1's script returns while rank 0 goes into learn(): the job ends fast, naming rank 1 and the collective."""
    assert_ends_saying("leave", tmp_path, "rank 1 of its group has left", LEARN_CHECK)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "names"),
    [
        ("save_split", "the gathering of the split model's shards (ParallelDQN.save"),
        ("save_sharded", "the sharded optimizer's Allgather (train(), ParallelDQN.save)"),
        ("predict_split", "every rank of a model group must run each forward pass together"),
    ],
)
def test_item2_a_collective_called_by_rank_0_only_fails_naming_the_call(tmp_path, mode, names):
    """``if rank == 0: model.save(path)`` (split or sharded) or ``predict`` on rank 0 alone with a split model."""
    assert_ends_saying(mode, tmp_path, names, "must run on every rank")


@pytest.mark.slow
def test_item2_two_ranks_in_collectives_that_never_meet_end_the_job(tmp_path):
    """Rank 0 saves a split model alone while rank 1 trains: each names its own call and the other's."""
    never_meet = "collectives called by some ranks only, or in another order, never meet"
    assert_ends_saying("mismatch", tmp_path, never_meet, "ParallelDQN.save")


@pytest.mark.slow
def test_item2_a_signal_ends_a_job_blocked_in_a_collective(tmp_path):
    """SIGTERM to mpirun while rank 0 waits for a rank that only records the stop request: ends within 30 s."""
    assert_ends_saying("signal", tmp_path, "SIGTERM arrived", send_sigterm_after_s=2.0)


@pytest.mark.slow
def test_item2_the_collective_timeout_ends_a_job_whose_rank_never_arrives(tmp_path):
    """A rank alive but elsewhere (asleep): the configurable collective timeout ends the job, naming the collective."""
    timeout = {"SB3_PARALLEL_DQN_COLLECTIVE_TIMEOUT": "4"}
    assert_ends_saying("timeout", tmp_path, "longer than the collective timeout (4 s", LEARN_CHECK, env=timeout)


def test_item3_save_then_load_on_every_rank(tmp_path):
    """SB3's habit under mpirun: save then load on every rank (rank 1 raised FileNotFoundError); rank 0 may save alone."""
    check_ok(run_mpi([SCENARIOS, "save_load_everywhere", str(tmp_path)], timeout=120))
    reports = rank_reports(tmp_path)
    assert sorted(report["rank"] for report in reports) == [0, 1]
    assert all(report["loaded"] == 8 and report["rank0_only"] for report in reports)


@pytest.mark.slow
def test_item4_split_model_refuses_different_inputs_on_the_ranks_of_a_group(tmp_path):
    """A split network's forward on different observations per rank: every rank raises, none gets wrong Q-values.
    The same observations pass, NaN ones included (a set of NaN fingerprints has two members)."""
    check_ok(run_mpi([SCENARIOS, "split_inputs", str(tmp_path)], timeout=120))
    reports = rank_reports(tmp_path)
    assert len(reports) == 2
    for report in reports:
        assert "ran one forward pass of the split Q-network on different inputs" in report["raised"]


@pytest.mark.slow
def test_item2_evaluation_decisions_are_rank_0s_without_a_seed(tmp_path):
    """The issue's command (sharded optimizer, evaluation, no --seed) hung forever: the ranks disagreed on "new best"."""
    args = ["-m", "sb3_parallel_dqn.train", "--env", "CartPole-v1", "--shard-optimizer", "-n", "3000"]
    args += ["--eval-freq", "500", "--eval-episodes", "3", "-f", str(tmp_path / "logs")]
    check_ok(run_mpi(args, timeout=150, cwd=tmp_path))
    assert list((tmp_path / "logs").rglob("best_model.zip"))


def test_item2_the_collective_timeout_is_configurable_and_generous_by_default(monkeypatch):
    """torch's default (30 minutes), the environment variable, set_timeout; a timeout <= 0 is refused."""
    from sb3_parallel_dqn.distributed import watchdog

    monkeypatch.delenv(watchdog.TIMEOUT_VARIABLE, raising=False)
    monkeypatch.setattr(watchdog, "_timeout_s", None)
    assert watchdog.timeout_s() == watchdog.DEFAULT_TIMEOUT_S == 1800
    monkeypatch.setenv(watchdog.TIMEOUT_VARIABLE, "12.5")
    assert watchdog.timeout_s() == 12.5
    watchdog.set_timeout(3)
    assert watchdog.timeout_s() == 3
    with pytest.raises(ValueError, match="must be > 0"):
        watchdog.set_timeout(0)


def test_item2_train_refuses_a_collective_timeout_that_is_not_positive():
    from conftest import run_python

    result = run_python(["-m", "sb3_parallel_dqn.train", "--collective-timeout", "0"], timeout=60)
    assert result.returncode == 2
    assert "--collective-timeout: must be > 0 seconds" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "n_procs"),
    [("slow_save_then_exit", 2), ("late_broadcast", 4), ("signal_then_long_wait", 2), ("save_then_sys_exit", 3)],
)
def test_item2_healthy_jobs_that_wait_are_not_ended(tmp_path, mode, n_procs):
    """
    No false alarms: a slow save on every rank whose rank 0 exits right after (its exit notice arrives with the file),
    a late rank in a broadcast on 4 ranks while the others wait in the next collective, a signal handled between
    waits and then a wait longer than the signal grace.
    """
    check_ok(run_mpi([SCENARIOS, mode, str(tmp_path)], n_procs=n_procs, timeout=150))
    reports = rank_reports(tmp_path)
    assert len(reports) == n_procs
    assert all(report.get("done") or report.get("content") == "done" for report in reports)
