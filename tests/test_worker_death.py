"""An env worker that dies or raises gives an error naming the env and rank, never a bare pipe error or a hang."""

import multiprocessing as mp
import os
import re
import signal
import time

import gymnasium as gym
import numpy as np
import pytest
from conftest import MPI_SCRIPTS, assert_holds, reports_present, run_mpi
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from sb3_parallel_dqn import make_parallel_vec_env
from sb3_parallel_dqn.envs import EnvWorkerError, ParallelSubprocVecEnv, resolve_vec_env_cls

# In-process tests: a hang (the failure this guards against) must fail fast rather than wait for the global timeout.
pytestmark = pytest.mark.timeout(60)

ACTIONS = np.zeros(2, dtype=np.int64)


class Fragile(gym.Wrapper):
    """CartPole that raises in its third step and can end its own process (cloudpickled by value into workers)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.n_steps = 0

    def step(self, action):
        self.n_steps += 1
        if self.n_steps == 3:
            raise ValueError("the env exploded at step 3")
        return self.env.step(action)

    def exit_now(self, code: int) -> None:
        os._exit(code)


class FailsToClose(gym.Wrapper):
    def close(self) -> None:
        raise RuntimeError("the simulator would not shut down")


def cartpole() -> gym.Env:
    return gym.make("CartPole-v1")


def fragile_cartpole() -> gym.Env:
    return Fragile(gym.make("CartPole-v1"))


def broken_constructor() -> gym.Env:
    raise OSError("cannot connect to the simulator")


def assert_closes_quietly(vec_env: ParallelSubprocVecEnv) -> None:
    start = time.monotonic()
    vec_env.close()
    assert time.monotonic() - start < 15
    assert not any(process.is_alive() for process in vec_env.processes)


# Worker 1 under fork is the case where SB3's SubprocVecEnv hangs for good instead of raising: it makes every pipe
# before starting the workers, so worker 0 inherits worker 1's end of its pipe and the parent never sees EOF.
@pytest.mark.parametrize("start_method, index", [("fork", 0), ("fork", 1), ("forkserver", 1), ("spawn", 1)])
def test_killed_worker_is_named_with_its_signal(start_method, index):
    vec_env = make_parallel_vec_env(
        "CartPole-v1", n_envs=2, seed=0, vec_env_cls="subproc", vec_env_kwargs={"start_method": start_method}
    )
    assert isinstance(vec_env, ParallelSubprocVecEnv)
    vec_env.reset()
    vec_env.step(ACTIONS)
    pid = vec_env.processes[index].pid
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(EnvWorkerError) as caught:
        vec_env.step(ACTIONS)
    error = caught.value
    assert str(error) == f"env worker {index} of rank 0 (global env index {index}, pid {pid}) died: killed by signal SIGKILL"
    assert isinstance(error.__cause__, (EOFError, OSError))
    assert (error.env_index, error.rank, error.global_index, error.pid, error.exitcode) == (index, 0, index, pid, -9)
    # Any later use repeats the error instead of reading a stale reply of the healthy worker.
    with pytest.raises(EnvWorkerError, match="cannot be used after an env worker failed"):
        vec_env.reset()
    assert_closes_quietly(vec_env)


def test_worker_exit_code_is_reported():
    vec_env = ParallelSubprocVecEnv([fragile_cartpole, fragile_cartpole], start_method="fork")
    pid = vec_env.processes[1].pid
    with pytest.raises(EnvWorkerError) as caught:
        vec_env.env_method("exit_now", 3, indices=[1])
    assert str(caught.value) == f"env worker 1 of rank 0 (global env index 1, pid {pid}) died: exited with code 3"
    assert caught.value.exitcode == 3
    assert_closes_quietly(vec_env)


def test_exception_in_worker_step_reaches_the_parent_with_its_traceback(capfd):
    # fork: the worker writes to the stderr that capfd captures (a forkserver may have started before this test)
    vec_env = ParallelSubprocVecEnv([cartpole, fragile_cartpole], start_method="fork")
    vec_env.reset()
    vec_env.step(ACTIONS)
    vec_env.step(ACTIONS)
    pid = vec_env.processes[1].pid
    with pytest.raises(EnvWorkerError) as caught:
        vec_env.step(ACTIONS)
    message = str(caught.value)
    assert message.startswith(f"env worker 1 of rank 0 (global env index 1, pid {pid}) raised an exception:\n")
    assert "Traceback (most recent call last):" in message
    assert re.search(r"in step\n.*\nValueError: the env exploded at step 3$", message, re.DOTALL), message
    assert caught.value.worker_traceback is not None
    assert_closes_quietly(vec_env)
    assert vec_env.processes[1].exitcode == 1
    # The worker sends its traceback instead of printing it: the user sees it once, in the parent's error.
    assert "exploded" not in capfd.readouterr().err


@pytest.mark.parametrize("broken_index", [0, 1])
def test_failing_env_constructor_is_reported(broken_index):
    env_fns = [cartpole, cartpole]
    env_fns[broken_index] = broken_constructor
    children_before = set(mp.active_children())
    with pytest.raises(
        EnvWorkerError, match=rf"(?s)env worker {broken_index} of rank 0 .* raised an exception:.*OSError: cannot"
    ):
        ParallelSubprocVecEnv(env_fns, start_method="fork")
    # The caller has no object to close: the constructor stopped the workers it started.
    assert set(mp.active_children()) <= children_before


def test_close_after_a_worker_died_mid_step_neither_hangs_nor_raises():
    vec_env = ParallelSubprocVecEnv([cartpole, cartpole], start_method="fork")
    vec_env.reset()
    vec_env.step_async(ACTIONS)
    os.kill(vec_env.processes[1].pid, signal.SIGKILL)
    assert_closes_quietly(vec_env)
    assert vec_env.processes[0].exitcode == 0  # the healthy worker was asked to stop, not killed


def test_exception_in_env_close_becomes_a_warning():
    vec_env = ParallelSubprocVecEnv([cartpole, lambda: FailsToClose(cartpole())], start_method="fork")
    with pytest.warns(UserWarning, match=r"(?s)env worker 1 of rank 0 .* failed to close.*would not shut down"):
        vec_env.close()
    assert vec_env.closed


def test_healthy_workers_behave_as_sb3s_and_ignore_ctrl_c():
    sb3 = SubprocVecEnv([cartpole, cartpole], start_method="fork")
    ours = ParallelSubprocVecEnv([cartpole, cartpole], start_method="fork")
    try:
        for vec_env in (sb3, ours):
            vec_env.seed(7)
        np.testing.assert_array_equal(sb3.reset(), ours.reset())
        # A Ctrl-C reaches the whole process group; the parent, not the signal, decides when workers stop.
        os.kill(ours.processes[0].pid, signal.SIGINT)
        for _ in range(30):  # CartPole episodes end within 30 steps of constant actions: the auto-reset runs too
            expected, got = sb3.step(ACTIONS), ours.step(ACTIONS)
            for a, b in zip(expected[:3], got[:3], strict=True):
                np.testing.assert_array_equal(a, b)
        assert ours.get_attr("spec") == sb3.get_attr("spec")
        assert ours.has_attr("gravity") and ours.env_is_wrapped(gym.wrappers.TimeLimit) == [True, True]
    finally:
        sb3.close()
        ours.close()
    assert [p.exitcode for p in ours.processes] == [0, 0]


def test_subproc_vec_envs_resolve_to_the_reporting_class():
    class CustomSubprocVecEnv(SubprocVecEnv):
        pass

    assert resolve_vec_env_cls(None, 2) is ParallelSubprocVecEnv
    assert resolve_vec_env_cls(None, 1) is DummyVecEnv
    assert resolve_vec_env_cls("subproc", 1) is ParallelSubprocVecEnv
    assert resolve_vec_env_cls(SubprocVecEnv, 2) is ParallelSubprocVecEnv
    assert resolve_vec_env_cls(CustomSubprocVecEnv, 2) is CustomSubprocVecEnv


@pytest.mark.slow
def test_killed_worker_under_mpirun_ends_the_job_with_its_name(tmp_path):
    result = run_mpi([str(MPI_SCRIPTS / "worker_death.py"), str(tmp_path)], timeout=120)
    end = time.time()
    killed = reports_present(tmp_path, "killed").get(1)  # rank 1's, just before the kill
    output = f"rank 1 killed: {killed}\nexit code {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert killed is not None, output
    print(f"mpirun exited {end - killed['time']:.2f} s after the kill")
    # rank 1 runs envs 2 and 3 of the job (n_envs=2 per rank)
    message = (
        f"EnvWorkerError: env worker 1 of rank 1 (global env index 3, pid {killed['pid']}) died: killed by signal SIGKILL"
    )
    properties = {
        "the job failed": result.returncode != 0,
        "stderr names the worker, its rank and pid, once": result.stderr.count(message) == 1,
        "the job was aborted once": result.stderr.count("uncaught exception, aborting the MPI job") == 1,
        "it ended within 30 s of the kill": end - killed["time"] < 30,
    }
    assert_holds(properties, output)


def exits_at_once() -> gym.Env:
    os._exit(3)  # as a worker that crashes in MPI_Init would


def test_worker_dying_at_start_under_mpi_says_what_to_do(monkeypatch):
    """Where a worker still inherited the launcher's variables, the error says how to avoid it (issue 12, item 1)."""
    from sb3_parallel_dqn.distributed import comm

    monkeypatch.setattr(comm, "launched_by_mpi", lambda: True)
    with pytest.raises(EnvWorkerError, match=r"exited with code 3.*import sb3_parallel_dqn before building any SubprocVecEnv"):
        ParallelSubprocVecEnv([exits_at_once], start_method="fork")
    monkeypatch.undo()
    with pytest.raises(EnvWorkerError) as caught:  # without MPI, no such advice
        ParallelSubprocVecEnv([exits_at_once], start_method="fork")
    assert "PMI_Init" not in str(caught.value)
