"""
Rank 1 kills one of its own env workers mid-training: the whole job must end at once, with an error naming it. Just
before the kill, rank 1 reports the worker's pid and the time (report.py, ``OUT_DIR/killed_rank1.json``).
``mpirun -np 2 python worker_death.py OUT_DIR``.
"""

import os
import signal
import sys
import time

from report import report
from stable_baselines3.common.callbacks import BaseCallback

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.distributed import comm


class KillOwnEnvWorker(BaseCallback):
    def _on_step(self) -> bool:
        if comm.rank() == 1 and self.n_calls == 200:
            pid = self.training_env.unwrapped.processes[1].pid
            # The test measures the time from here to the end of mpirun.
            report(sys.argv[1], "killed", worker=1, pid=pid, time=time.time())
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
