"""Rank 1 kills one of its own env workers mid-training: the whole job must end at once, with an error naming it."""

import os
import signal
import time

from stable_baselines3.common.callbacks import BaseCallback

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.distributed import comm


class KillOwnEnvWorker(BaseCallback):
    def _on_step(self) -> bool:
        if comm.rank() == 1 and self.n_calls == 200:
            pid = self.training_env.unwrapped.processes[1].pid
            # The test measures the time from here to the end of mpirun.
            print(f"rank 1 killed env worker 1 (pid {pid}) at {time.time():.3f}", flush=True)
            os.kill(pid, signal.SIGKILL)
        return True


if __name__ == "__main__":
    model = ParallelDQN(
        "MlpPolicy",
        "CartPole-v1",
        n_envs=2,
        vec_env_cls="subproc",
        learning_starts=100,
        train_freq=4,
        policy_kwargs={"net_arch": [16]},
    )
    model.learn(100_000, callback=KillOwnEnvWorker())
