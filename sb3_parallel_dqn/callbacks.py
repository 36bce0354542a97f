"""Callbacks that keep SB3's behaviour when several MPI ranks train one model."""

from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ConvertCallback, ProgressBarCallback
from stable_baselines3.common.type_aliases import MaybeCallback

from sb3_parallel_dqn.distributed import lockstep


class GlobalProgressBarCallback(ProgressBarCallback):
    """
    SB3's progress bar, counting the env steps of all ranks (``num_timesteps`` is global in ``ParallelDQN``).

    Add it on rank 0 only: one bar per job, not one per rank.
    """

    def _on_step(self) -> bool:
        # Every rank steps ``num_envs`` envs per call, in lockstep with this one.
        self.pbar.update(lockstep.global_envs(self.training_env.num_envs, getattr(self.model, "_mesh", None)))
        return True


def with_global_progress_bar(callback: MaybeCallback, is_root: bool) -> BaseCallback:
    """``callback`` as one ``BaseCallback`` (as SB3's ``_init_callback`` makes it), with the job's progress bar on rank 0."""
    if isinstance(callback, list):
        callback = CallbackList(callback)
    if not isinstance(callback, BaseCallback):
        callback = ConvertCallback(callback)
    return CallbackList([callback, GlobalProgressBarCallback()]) if is_root else callback
