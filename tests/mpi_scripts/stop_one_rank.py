"""A callback stops training on rank 1 only: every rank must leave learn() cleanly, at the same rollout."""

import json
import sys
from pathlib import Path

from stable_baselines3.common.callbacks import BaseCallback

from sb3_parallel_dqn import ParallelDQN, mpi_tools


class StopOnRankOne(BaseCallback):
    def _on_step(self) -> bool:
        return not (mpi_tools.rank() == 1 and self.n_calls >= 150)


if __name__ == "__main__":
    out_dir = Path(sys.argv[1])
    model = ParallelDQN(
        "MlpPolicy",
        "CartPole-v1",
        learning_starts=100,
        train_freq=16,
        gradient_steps=4,
        policy_kwargs={"net_arch": [16]},
        seed=0,
    )
    model.learn(50_000, callback=StopOnRankOne())
    info = {"num_timesteps": model.num_timesteps, "n_updates": model._n_updates}
    # The ranks agree on the step count, so training can go on from there.
    model.learn(64, reset_num_timesteps=False)
    info["num_timesteps_after_more"] = model.num_timesteps
    (out_dir / f"stop_rank{mpi_tools.rank()}.json").write_text(json.dumps(info))
    print(f"rank {mpi_tools.rank()} left learn() at {model.num_timesteps} steps", flush=True)
