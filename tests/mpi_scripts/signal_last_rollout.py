"""
Issue 23, item 5: SIGTERM reaches one rank while the job collects its last rollout. Training then ends after that
rollout's updates, which is the end of its budget anyway: the run must still write its final model (``<env>.zip``)
and replay buffer shards, and exit with 128 + the signal. Usage: ``signal_last_rollout.py LOG_FOLDER SIGNALLED_RANK``;
each rank reports (report.py, ``LOG_FOLDER/signal_last_rollout_rank<r>.json``) its exit code and the files of the
run folder.
"""

import os
import signal
import sys
from pathlib import Path

from report import report

from sb3_parallel_dqn.distributed import comm
from sb3_parallel_dqn.parallel_dqn import ParallelDQN
from sb3_parallel_dqn.train import main


def signal_in_the_last_rollout(signalled_rank: int) -> None:
    original = ParallelDQN.collect_rollouts

    def collect_rollouts(self, env, callback, train_freq, *args, **kwargs):
        last = self.num_timesteps + train_freq.frequency * env.num_envs * comm.world_size() >= self._total_timesteps
        if last and comm.rank() == signalled_rank and not getattr(self, "_signalled", False):
            self._signalled = True
            os.kill(os.getpid(), signal.SIGTERM)  # handled at once (stop_on_signals): the rollout goes on
        return original(self, env, callback, train_freq, *args, **kwargs)

    ParallelDQN.collect_rollouts = collect_rollouts  # type: ignore[method-assign]


if __name__ == "__main__":
    folder, signalled_rank = Path(sys.argv[1]), int(sys.argv[2])
    signal_in_the_last_rollout(signalled_rank)
    code = main(["--env", "CartPole-v1", "-n", "256", "-f", str(folder), "--seed", "0", "--save-replay-buffer",
                 "--eval-freq", "0", "--final-eval-episodes", "2", "--verbose", "0",
                 "-params", "learning_starts:64", "train_freq:16", "policy_kwargs:dict(net_arch=[8])"])  # fmt: skip
    run_dir = folder / "parallel_dqn" / "CartPole-v1_1"
    files = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    report(folder, "signal_last_rollout", rank=comm.rank(), exit=code, files=files)
    sys.exit(code)
