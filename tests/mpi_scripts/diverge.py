"""
Perturb one weight on rank 1 only: the periodic sync check must catch it on every rank and name rank 1. Each rank
reports (report.py, ``diverge_rank<r>.json``) the error it caught (its type and message; null if none).
``mpirun -np 2 python diverge.py OUT_DIR``.
"""

import sys
from pathlib import Path

import torch as th
from report import report
from stable_baselines3.common.callbacks import BaseCallback

from sb3_parallel_dqn import ParallelDQN, WeightsDivergedError
from sb3_parallel_dqn.distributed import comm


class PerturbRankOne(BaseCallback):
    def _on_step(self) -> bool:
        if comm.rank() == 1 and self.n_calls == 300:
            with th.no_grad():
                next(self.model.q_net.parameters()).view(-1)[0] += 1e-3
        return True


def run(out_dir: Path) -> None:
    model = ParallelDQN(
        "MlpPolicy",
        "CartPole-v1",
        learning_starts=100,
        train_freq=4,
        policy_kwargs={"net_arch": [16]},
        sync_check_interval=25,
        seed=0,
    )
    caught = None
    try:
        model.learn(5_000, callback=PerturbRankOne())
    except WeightsDivergedError as error:
        caught = {"type": type(error).__name__, "message": str(error)}
    report(out_dir, "diverge", caught=caught)


if __name__ == "__main__":
    run(Path(sys.argv[1]))
