"""
The data-parallel properties at W = 4 and 8 ranks (oversubscribed on a small machine: correctness only, small
budgets), in one job: ``mpirun -np W python scale_scenario.py OUT_DIR``. Each section reports under ``OUT_DIR/<section>/``
(report.py), and tests/test_scale_out.py reads them. Sections, in order:

1. ``train``: 2 envs per rank, 3-step returns: weights and Adam state identical on every rank, the global budget
   honoured (every rank's own steps add up to it), and every env of the job seeded differently;
2. ``prioritized``: prioritized replay's importance weights divided by the maximum over all W ranks at every step
   (prioritized_dueling.py, with DummyVecEnv workers: 2W subprocesses would only slow an oversubscribed machine);
3. ``stop``: a callback stops rank 1 mid-rollout, and every rank leaves learn() at the same rollout and agrees on
   steps, episodes and checkpoints (stop_one_rank.py);
4. ``diverge``: a weight changed on rank 1 only is caught on every rank (diverge.py).
"""

import hashlib
import sys
from pathlib import Path

import diverge
import numpy as np
import prioritized_dueling
import stop_one_rank
from report import report
from sections import run_sections
from stable_baselines3.common.callbacks import BaseCallback

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.distributed import comm

BUDGET = 4096  # a multiple of train_freq x n_envs x W for W = 4 and 8, so that no rollout goes past it


class RecordStart(BaseCallback):
    """This rank's first observations (from the seeded reset) and how many env steps it made itself."""

    def _on_training_start(self) -> None:
        self.first_obs = np.asarray(self.model._last_obs).tolist()

    def _on_step(self) -> bool:
        return True


def digest(tensors) -> str:
    sha = hashlib.sha256()
    for tensor in tensors:
        sha.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


def train(out_dir: Path) -> None:
    model = ParallelDQN(
        "MlpPolicy",
        "CartPole-v1",
        n_envs=2,
        vec_env_cls="dummy",
        learning_starts=256,
        train_freq=8,
        gradient_steps=2,
        target_update_interval=256,
        buffer_size=2_000,
        n_steps=3,
        policy_kwargs={"net_arch": [32, 32]},
        sync_check_interval=16,
        seed=3,
    )
    env_seeds = list(model.env._seeds)  # set_random_seed() queued them for the first reset
    record = RecordStart()
    model.learn(BUDGET, callback=record)
    optimizer_state = [t for state in model.policy.optimizer.state.values() for t in state.values()]
    info = {
        "world_size": comm.world_size(),
        "num_timesteps": model.num_timesteps,
        "own_env_steps": record.n_calls * model.n_envs,
        "n_updates": model._n_updates,
        "env_seeds": env_seeds,
        "first_obs": record.first_obs,
        "weights": digest(model.policy.parameters()),
        "optimizer": digest(optimizer_state),
    }
    report(out_dir, "train", **info)


if __name__ == "__main__":
    out_dir = Path(sys.argv[1])
    sections = {
        "train": train,
        "prioritized": lambda folder: prioritized_dueling.run(folder, vec_env_cls="dummy"),
        "stop": stop_one_rank.run,
        "diverge": diverge.run,
    }
    run_sections(out_dir, sections)
