"""
Inject one fault on rank 1 of a training job: ``python fault_one_rank.py <fault> <out_dir>``.

Faults: ``env_step`` (an exception in the env's step), ``train`` (an exception in a gradient update), ``callback``
(an exception in a callback), ``sigkill`` (rank 1 kills itself with SIGKILL), ``nan`` (rank 1's env returns a NaN
reward, so the averaged gradients are NaN on every rank). Checkpoints are written to ``out_dir`` every 256 global
steps; the fault comes after several of them. Just before injecting it, rank 1 reports the fault and the time
(report.py, ``out_dir/fault_rank1.json``), so the test can measure how long the job takes to end; a rank whose
learn() returns reports that it finished (``finished_rank<r>.json``), which it must not.
"""

import math
import os
import signal
import sys
import time

import gymnasium as gym
from report import report
from stable_baselines3.common.callbacks import BaseCallback

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.distributed import comm
from sb3_parallel_dqn.io.checkpoints import ParallelCheckpointCallback

FAULT_STEP = 1200  # env steps of rank 1 (2 ranks: ~2400 global steps, after 9 checkpoints)


def announce() -> None:
    # In a file, not on stdout: output written just before MPI_Abort may not make it through the launcher.
    report(sys.argv[2], "fault", fault=sys.argv[1], time=time.time())


class FaultyEnv(gym.Wrapper):
    """CartPole whose step fails (or returns a NaN reward) at step FAULT_STEP on rank 1."""

    def __init__(self, env: gym.Env, fault: str) -> None:
        super().__init__(env)
        self.fault = fault
        self.steps = 0

    def step(self, action):
        self.steps += 1
        obs, reward, terminated, truncated, info = self.env.step(action)
        if comm.rank() == 1 and self.steps == FAULT_STEP:
            announce()
            if self.fault == "env_step":
                raise RuntimeError("injected failure in env.step on rank 1")
        if comm.rank() == 1 and self.steps >= FAULT_STEP and self.fault == "nan":
            reward = math.nan  # from now on, so that the next sampled batches surely hold one
        return obs, reward, terminated, truncated, info


class FaultyCallback(BaseCallback):
    def __init__(self, fault: str) -> None:
        super().__init__()
        self.fault = fault

    def _on_step(self) -> bool:
        if comm.rank() == 1 and self.n_calls == FAULT_STEP:
            if self.fault == "callback":
                announce()
                raise RuntimeError("injected failure in a callback on rank 1")
            if self.fault == "sigkill":
                announce()
                os.kill(os.getpid(), signal.SIGKILL)
            if self.fault == "train":
                model = self.model
                original = model.train

                def failing_train(*args, **kwargs):
                    announce()
                    raise RuntimeError("injected failure in train on rank 1")

                model.train = failing_train  # type: ignore[method-assign]
                del original
        return True


if __name__ == "__main__":
    fault, out_dir = sys.argv[1], sys.argv[2]
    env = gym.make("CartPole-v1")
    if fault in ("env_step", "nan"):
        env = FaultyEnv(env, fault)
    model = ParallelDQN(
        "MlpPolicy",
        env,
        learning_starts=200,
        train_freq=16,
        gradient_steps=4,
        batch_size=32,
        target_update_interval=100,
        policy_kwargs={"net_arch": [32]},
        seed=0,
    )
    checkpoints = ParallelCheckpointCallback(256, out_dir)
    model.learn(100_000, callback=[checkpoints, FaultyCallback(fault)])
    report(out_dir, "finished", num_timesteps=model.num_timesteps)  # training ended without the fault
