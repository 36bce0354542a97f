"""
:class:`GlobalClock`: the global step arithmetic of one ``ParallelDQN``, in one object.

SB3's counters count env steps of the one process. Here they count the job's: ``num_timesteps`` (so callbacks,
schedules, ``learning_starts`` and ``total_timesteps``), ``target_update_interval`` and the progress read by the
learning rate, exploration and prioritized replay's beta. With D model replicas (the data-parallel ranks) stepping
``n_envs`` envs each, one ``env.step()`` call of a rank is ``n_envs * D`` global steps
(:func:`~sb3_parallel_dqn.distributed.lockstep.global_envs`). The counters stay SB3's own attributes (SB3's loops
and callbacks read them); this object is the only code that adjusts them for the other ranks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sb3_parallel_dqn import compat
from sb3_parallel_dqn.distributed import comm, lockstep
from sb3_parallel_dqn.distributed.gradients import broadcast_module_
from sb3_parallel_dqn.distributed.mesh import Mesh

if TYPE_CHECKING:
    from stable_baselines3 import DQN
    from stable_baselines3.common.type_aliases import RolloutReturn


class GlobalClock:
    """
    The global step counts of ``model`` (see the module docstring).

    :param model: the model whose SB3 counters count global steps
    :param grid: the model's mesh (its data-parallel size D is the number of replicas that step envs)
    """

    def __init__(self, model: DQN, grid: Mesh) -> None:
        self.model, self.grid = model, grid

    def envs_per_call(self, n_envs: int) -> int:
        """Global env steps in one ``env.step()`` call of every replica: ``n_envs * D``."""
        return lockstep.global_envs(n_envs, self.grid)

    def count_other_ranks(self, n_envs: int) -> None:
        """
        Before this rank's ``env.step()``: SB3 adds this rank's ``n_envs`` right after it; the other replicas step as
        many envs at the same time, so count theirs now and callbacks and schedules read a global count.
        """
        self.model.num_timesteps += self.envs_per_call(n_envs) - n_envs

    def after_rollout(self, rollout: RolloutReturn, agreed: lockstep.RolloutAgreement) -> None:
        """
        The counts of the rollout all ranks agreed on: :meth:`count_other_ranks` assumed every replica made as many
        steps as this one (they differ after a callback stop), and SB3 counted this rank's episodes only.
        """
        model = self.model
        model.num_timesteps += agreed.n_steps - self.envs_per_call(1) * rollout.episode_timesteps
        compat.count_episodes(model, agreed.n_episodes - rollout.n_episodes)  # time/episodes counts every rank's
        self.realign_after_stop(agreed.stop)

    def target_update_due(self, n_calls: int, target_update_interval: int) -> bool:
        """Whether SB3's ``_on_step`` call number ``n_calls`` updates the target: every ``target_update_interval``
        global steps, ``n_envs * D`` of them per call."""
        return n_calls % lockstep.calls_per(target_update_interval, self.model.n_envs, self.grid) == 0

    def start_learn(self, reset_num_timesteps: bool, saved_global_envs: int | None) -> int:
        """
        At the start of ``learn``: where a resumed run steps another number of global envs per call than when it
        last trained (another ``n_envs`` or world size), rescale SB3's call counter so that the next target update
        falls on the same global step. Returns the global envs per call, for the model to save.
        """
        global_envs = self.envs_per_call(self.model.n_envs)
        if not reset_num_timesteps and saved_global_envs not in (None, global_envs):
            calls = compat.target_update_calls(self.model) * saved_global_envs // global_envs  # type: ignore[operator]
            compat.set_target_update_calls(self.model, calls)
        return global_envs

    def realign_after_stop(self, stopped: bool) -> None:
        """
        After a rollout that a callback stopped on some rank(s), make the per-step state that followed each rank's
        own step count the job's again: the ranks made different numbers of steps in that rollout. **Collective**
        when ``stopped`` (the same on every rank: the agreement decided it), free otherwise.

        - The progress (learning rate, exploration, prioritized replay's beta) is recomputed from the step count all
          ranks agreed on. A ``train()`` right after ``learn()``, or the next ``learn()``'s first update, would
          otherwise use each rank's own learning rate, and the weights would drift apart.
        - The target-update counter and the target network are taken from the replica that went furthest. It made
          every target update that fell in the rollout.
        """
        if not stopped or comm.world_size() == 1:
            return
        model = self.model
        model.exploration_rate = model.exploration_schedule(compat.refresh_progress(model))
        own_calls = np.array([compat.target_update_calls(model)], dtype=np.int64)
        calls = comm.allgather(
            own_calls, group=self.grid.data_group, what="the realignment after a callback stop (collect_rollouts)"
        ).reshape(-1)
        compat.set_target_update_calls(model, int(calls.max()))
        broadcast_module_(model.q_net_target, root=int(calls.argmax()), group=self.grid.data_group)
