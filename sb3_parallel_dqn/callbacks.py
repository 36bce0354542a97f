"""Callbacks that keep SB3's behaviour when several MPI ranks train one model."""

from stable_baselines3.common.callbacks import ProgressBarCallback

from sb3_parallel_dqn import mpi_tools


class GlobalProgressBarCallback(ProgressBarCallback):
    """
    SB3's progress bar, counting the env steps of all ranks (``num_timesteps`` is global in ``ParallelDQN``).

    Add it on rank 0 only: one bar per job, not one per rank.
    """

    def _on_step(self) -> bool:
        # Every rank steps ``num_envs`` envs per call, in lockstep with this one.
        self.pbar.update(self.training_env.num_envs * mpi_tools.world_size())
        return True
