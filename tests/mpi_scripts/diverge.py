"""Perturb one weight on rank 1 only: the periodic sync check must catch it on every rank and name rank 1."""

import torch as th
from stable_baselines3.common.callbacks import BaseCallback

from sb3_parallel_dqn import ParallelDQN, WeightsDivergedError
from sb3_parallel_dqn.distributed import comm


class PerturbRankOne(BaseCallback):
    def _on_step(self) -> bool:
        if comm.rank() == 1 and self.n_calls == 300:
            with th.no_grad():
                next(self.model.q_net.parameters()).view(-1)[0] += 1e-3
        return True


def run() -> None:
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
        print(f"rank {comm.rank()} caught: {error}", flush=True)
    else:
        print(f"rank {comm.rank()} finished without noticing the divergence", flush=True)


if __name__ == "__main__":
    run()
