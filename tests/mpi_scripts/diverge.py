"""Perturb one weight on rank 1 only: the periodic sync check must catch it on every rank and name rank 1."""

import torch as th
from stable_baselines3.common.callbacks import BaseCallback

from sb3_parallel_dqn import ParallelDQN, WeightsDivergedError, mpi_tools


class PerturbRankOne(BaseCallback):
    def _on_step(self) -> bool:
        if mpi_tools.rank() == 1 and self.n_calls == 300:
            with th.no_grad():
                next(self.model.q_net.parameters()).view(-1)[0] += 1e-3
        return True


if __name__ == "__main__":
    model = ParallelDQN(
        "MlpPolicy",
        "CartPole-v1",
        learning_starts=100,
        train_freq=4,
        policy_kwargs={"net_arch": [16]},
        sync_check_interval=25,
        seed=0,
    )
    try:
        model.learn(5_000, callback=PerturbRankOne())
    except WeightsDivergedError as error:
        print(f"rank {mpi_tools.rank()} caught: {error}", flush=True)
    else:
        print(f"rank {mpi_tools.rank()} finished without noticing the divergence", flush=True)
