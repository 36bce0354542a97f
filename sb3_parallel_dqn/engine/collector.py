"""
:class:`Collector`: the collecting role of ``ParallelDQN`` -- acting on the envs (SB3's epsilon-greedy choice on the
Q-network, without ``policy.predict``'s wrapper), the end-of-rollout agreement of the ranks, and the episode
statistics of the job.

SB3's ``collect_rollouts`` still steps the envs and writes the transitions (callbacks, ``Monitor`` episodes, replay
``add`` all stay SB3's); the model hands this object the two places where a parallel job differs: which action to
take (and the other ranks' steps counted, see :class:`~sb3_parallel_dqn.engine.clock.GlobalClock`) and what every
rank agrees on after the rollout. It never touches the update: the learner's side is
:class:`~sb3_parallel_dqn.engine.learner.Learner`.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch as th

from sb3_parallel_dqn import compat, interrupt
from sb3_parallel_dqn.distributed import comm, lockstep
from sb3_parallel_dqn.distributed.mesh import Mesh
from sb3_parallel_dqn.engine.clock import GlobalClock

if TYPE_CHECKING:
    from stable_baselines3 import DQN
    from stable_baselines3.common.type_aliases import RolloutReturn


class Collector:
    """
    The collecting role of ``model`` (see the module docstring).

    :param model: the model whose envs and replay buffer SB3's ``collect_rollouts`` uses
    :param grid: the model's mesh
    :param clock: the model's global step counts
    """

    def __init__(self, model: DQN, grid: Mesh, clock: GlobalClock) -> None:
        self.model, self.grid, self.clock = model, grid, clock
        # The job's episode means from the last agreement (None with one process: SB3 logs its own buffers).
        self.episode_means: dict[str, float] | None = None

    def start_rollout(self) -> None:
        """Evaluation mode for action selection (dropout, batch norm), once per rollout: train() switches back."""
        self.model.policy.set_training_mode(False)

    def greedy_or_random(self, n_envs: int) -> np.ndarray | None:
        """
        SB3's epsilon-greedy action choice after ``learning_starts`` (``DQN.predict(deterministic=False)``), without
        the generic ``policy.predict`` around the Q-network forward: that wrapper (mode switch over every module,
        observation checks and reshapes) cost about 0.2 ms per env step, several times the CartPole step itself.
        Same random draws in the same order, same forward, so the same actions as SB3. Returns None where SB3's
        path is needed: before ``learning_starts`` and for observations other than one array of the space's shape
        (dicts, un-transposed images).
        """
        model = self.model
        observation = compat.last_observation(model)
        if (
            model.num_timesteps < model.learning_starts
            or not isinstance(observation, np.ndarray)
            or observation.shape[1:] != model.observation_space.shape
        ):
            return None
        if np.random.rand() < model.exploration_rate:
            return np.array([model.action_space.sample() for _ in range(n_envs)])
        with th.no_grad():
            # QNetwork._predict(observation, deterministic=True)
            q_values = model.q_net(th.as_tensor(observation, device=model.device))
        return q_values.argmax(dim=1).cpu().numpy().reshape(-1)

    def finish_rollout(self, rollout: RolloutReturn) -> RolloutReturn:
        """
        After SB3's rollout of this rank, what every rank agrees on (one ``Allreduce``, collective): a stop on any
        rank (a callback's, or a signal's after this rollout's updates), the job's step and episode counts, and
        the job's episode statistics. Returns the rollout to go on with.
        """
        model = self.model
        assert model.ep_info_buffer is not None and model.ep_success_buffer is not None
        agreed = lockstep.agree_on_rollout(
            not rollout.continue_training,
            rollout.episode_timesteps,
            rollout.n_episodes,
            model.ep_info_buffer,
            model.ep_success_buffer,
            interrupt.requested(),
            self.grid,
        )
        self.clock.after_rollout(rollout, agreed)
        self.episode_means = agreed.episode_means if comm.world_size() > 1 else None
        if agreed.signal is not None:
            model.stopped_by_signal = agreed.signal  # type: ignore[attr-defined]
            interrupt.acknowledge()  # on every rank: a later learn() runs in full
        return rollout._replace(continue_training=not agreed.stop)

    @contextlib.contextmanager
    def episode_buffers_of_the_job(self) -> Iterator[None]:
        """
        Within the block, SB3's ``model.ep_info_buffer`` and ``ep_success_buffer`` (whose means SB3's ``dump_logs``
        logs) are stand-ins with the means over every replica's episodes, from the last :meth:`finish_rollout`; the
        rank's own buffers come back afterwards. Nothing changes with one process, or before the first rollout.
        """
        model, means = self.model, self.episode_means
        local_buffers = model.ep_info_buffer, model.ep_success_buffer
        if means is not None:
            model.ep_info_buffer = deque([{"r": means["r"], "l": means["l"]}] if "r" in means else [])
            model.ep_success_buffer = deque([means["success"]] if "success" in means else [])
        try:
            yield
        finally:
            model.ep_info_buffer, model.ep_success_buffer = local_buffers
