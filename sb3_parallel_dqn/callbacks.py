"""Callbacks that keep SB3's behaviour when several MPI ranks train one model."""

import os

from stable_baselines3.common.callbacks import BaseCallback, ProgressBarCallback

from sb3_parallel_dqn import mpi_tools
from sb3_parallel_dqn.zoo_env import save_vecnormalize


class GlobalProgressBarCallback(ProgressBarCallback):
    """
    SB3's progress bar, counting the env steps of all ranks (``num_timesteps`` is global in ``ParallelDQN``).

    Add it on rank 0 only: one bar per job, not one per rank.
    """

    def _on_step(self) -> bool:
        # Every rank steps ``num_envs`` envs per call, in lockstep with this one.
        self.pbar.update(self.training_env.num_envs * mpi_tools.world_size())
        return True


class SaveVecNormalizeCallback(BaseCallback):
    """
    Save the training envs' ``VecNormalize`` statistics (rank 0's) to ``save_path`` whenever it is called, e.g. as
    ``EvalCallback(callback_on_new_best=...)``, so that the best model is kept with its statistics (as the zoo does).
    Does nothing when the envs are not normalized.

    :param save_path: the ``.pkl`` file to write (atomically)
    """

    def __init__(self, save_path: str | os.PathLike[str], verbose: int = 0) -> None:
        super().__init__(verbose)
        self.save_path = save_path

    def _on_step(self) -> bool:
        saved = save_vecnormalize(self.model.get_vec_normalize_env(), self.save_path)
        if saved is not None and self.verbose >= 2:
            print(f"Saving VecNormalize to {saved}")
        return True
