"""
The settings every rank of a ``ParallelDQN`` job must share, checked before any training collective (the rule that
compares them lives in :func:`sb3_parallel_dqn.distributed.lockstep.check_same_settings`).
"""

from __future__ import annotations

from typing import Any

from sb3_parallel_dqn.distributed import comm
from sb3_parallel_dqn.distributed.lockstep import check_same_settings, check_train_freq
from sb3_parallel_dqn.distributed.tensor_parallel import whole_shapes

# What changes the number or the size of the collectives (a deadlock, or an error inside MPI), or would make the
# ranks train different models.
SHARED_SETTINGS = ("n_envs", "gradient_steps", "learning_starts", "sync_check_interval", "batch_size", "n_steps",
                   "double_q", "model_parallel_size", "shard_optimizer", "learner_ranks", "samples_per_insert",
                   "weight_sync_interval")  # fmt: skip


def check_model(model: Any, **learn_settings: Any) -> None:
    """
    Refuse, on every rank and before any training collective, a ``ParallelDQN`` whose settings differ across ranks
    (:data:`SHARED_SETTINGS`, ``train_freq``, the replay buffer class and the parameter shapes), plus ``learn``'s own
    settings. The parameter shapes are the whole network's (shards may differ in size). Collective (one
    ``allgather``).
    """
    check_train_freq(model.train_freq.frequency, model.train_freq.unit.value, comm.world_size())
    buffer_class = type(model.replay_buffer) if model.replay_buffer is not None else model.replay_buffer_class
    buffer_class = getattr(model.replay_buffer, "stands_for", buffer_class)  # an actor's outbox: the learner's class
    settings = {name: getattr(model, name) for name in SHARED_SETTINGS} | {
        "train_freq": model.train_freq.frequency,
        "replay_buffer_class": getattr(buffer_class, "__qualname__", None),
        "parameters": whole_shapes(model.policy),
    }
    check_same_settings({**settings, **learn_settings})
