"""
Prioritized experience replay (Schaul et al. 2016, https://arxiv.org/abs/1511.05952), proportional variant.

:class:`PrioritizedReplayBuffer` is an SB3 replay buffer: pass it as ``replay_buffer_class`` (or
``replay_buffer_class: PrioritizedReplayBuffer`` in a zoo YAML entry). ``ParallelDQN`` then samples it with
importance weights, weights the TD loss with them and writes the new priorities back after each gradient step.

Under MPI every rank keeps its own buffer (Ape-X style sharding, https://arxiv.org/abs/1803.00933) and samples its
own batch from it. Each rank draws the same number of samples, so a transition's probability in the combined batch
is its rank-local probability divided by the number of ranks and, with shards of equal size, its importance weight
``(N * P(i)) ** -beta`` is the rank-local one. ``ParallelDQN`` divides the weights of every rank by the *global*
maximum weight of the step (one small ``Allreduce``), so that the averaged gradient weighs every sample of every
rank on the same scale.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import HerReplayBuffer
from stable_baselines3.common.buffers import NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from sb3_parallel_dqn.sum_tree import SumTree


class PrioritizedReplayBuffer(NStepReplayBuffer):
    """
    Replay buffer that samples transitions in proportion to ``priority ** alpha``, with n-step returns when
    ``n_steps > 1`` (as SB3's ``NStepReplayBuffer``; ``ParallelDQN`` passes its own ``n_steps`` and ``gamma``).

    New transitions get the largest priority seen so far, so that each is replayed at least about once; a sampled
    transition's priority becomes ``|TD error| + epsilon`` after the gradient step that used it.

    :param buffer_size: Max number of element in the buffer
    :param observation_space: Observation space (not a ``Dict`` space)
    :param action_space: Action space
    :param device: PyTorch device
    :param n_envs: Number of parallel environments
    :param optimize_memory_usage: Enable a memory efficient variant of the replay buffer (only with ``n_steps=1``,
        as in SB3). Needs ``handle_timeout_termination=False``.
    :param handle_timeout_termination: Handle timeout termination (due to timelimit)
        separately and treat the task as infinite horizon task.
    :param n_steps: Number of steps to accumulate rewards for n-step returns (1: one-step transitions)
    :param gamma: Discount factor for future rewards (used when ``n_steps > 1``)
    :param alpha: How much prioritization is used (0: uniform sampling, 1: fully proportional)
    :param beta: Initial importance-sampling exponent, annealed linearly to ``final_beta`` over training
        (``ParallelDQN`` calls :meth:`set_progress` with the global training progress)
    :param final_beta: Importance-sampling exponent at the end of training (1: full correction)
    :param epsilon: Added to every absolute TD error, so that no transition's priority is 0
    """

    # ParallelDQN hands this class its own n_steps and gamma (see with_model_n_steps)
    takes_model_n_steps = True

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        n_steps: int = 1,
        gamma: float = 0.99,
        alpha: float = 0.6,
        beta: float = 0.4,
        final_beta: float = 1.0,
        epsilon: float = 1e-6,
    ) -> None:
        check_prioritized_arguments(observation_space, optimize_memory_usage, n_steps, alpha, beta, final_beta, epsilon)
        # NStepReplayBuffer.__init__ refuses optimize_memory_usage even for n_steps=1, where ReplayBuffer's own
        # sampling applies: set up the storage as ReplayBuffer does, and the n-step settings by hand.
        ReplayBuffer.__init__(
            self,
            buffer_size,
            observation_space,
            action_space,
            device=device,
            n_envs=n_envs,
            optimize_memory_usage=optimize_memory_usage,
            handle_timeout_termination=handle_timeout_termination,
        )
        self.n_steps = n_steps
        self.gamma = gamma
        self._init_priorities(alpha, beta, final_beta, epsilon)

    def _init_priorities(self, alpha: float, beta: float, final_beta: float, epsilon: float) -> None:
        """The prioritized part, once the storage is set up (here, or by a subclass with storage of its own)."""
        self.alpha = alpha
        self.initial_beta = self.beta = beta
        self.final_beta = final_beta
        self.epsilon = epsilon
        # Leaf pos * n_envs + e holds the priority ** alpha of the transition in row pos of env e.
        self.tree = SumTree(self.buffer_size * self.n_envs)
        self.max_priority = 1.0

    def set_progress(self, progress_remaining: float) -> None:
        """Anneal beta linearly from its initial value (progress 1) to ``final_beta`` (progress 0)."""
        # SB3's progress overshoots past 0 by up to one rollout at the end of training.
        progress_remaining = min(max(progress_remaining, 0.0), 1.0)
        self.beta = self.final_beta + (self.initial_beta - self.final_beta) * progress_remaining

    def add(self, *args: Any, **kwargs: Any) -> None:
        row = self.pos
        super().add(*args, **kwargs)
        self._set_row_priority(row, self.max_priority**self.alpha)
        if self.optimize_memory_usage and self.full:
            # The next row's transition lost its next observation to this one's (both share one array): it must
            # not be drawn until it is overwritten (SB3's sample() skips pos for the same reason).
            self._set_row_priority(self.pos, 0.0)

    def _set_row_priority(self, row: int, priority: float) -> None:
        if self.n_envs == 1:
            self.tree.update(row, priority)
        else:
            self.tree.update(row * self.n_envs + np.arange(self.n_envs), priority)

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
        """A prioritized batch, without its importance weights (see :meth:`sample_prioritized`)."""
        return self.sample_prioritized(batch_size, env)[0]

    def sample_prioritized(
        self, batch_size: int, env: VecNormalize | None = None
    ) -> tuple[ReplayBufferSamples, np.ndarray, np.ndarray]:
        """
        Draw ``batch_size`` transitions in proportion to their priorities.

        :return: the batch; each sample's importance weight ``(N * P(i)) ** -beta``, not normalised (divide by the
            largest weight, over all ranks under MPI); and the samples' leaf indices, for :meth:`update_priorities`
        """
        leaves = self.tree.sample(batch_size)
        if self.n_envs > 1:
            # Grouped by env (see _get_samples_of_envs); the order of a batch is irrelevant to the loss.
            leaves = leaves[np.argsort(leaves % self.n_envs, kind="stable")]
        probabilities = self.tree.priorities[leaves] / self.tree.total
        weights = (self.size() * self.n_envs * probabilities) ** -self.beta
        rows, env_indices = np.divmod(leaves, self.n_envs)
        return self._get_samples_of_envs(rows, env_indices, env), weights, leaves

    def update_priorities(self, leaves: np.ndarray, td_errors: np.ndarray) -> None:
        """Set the priorities of the sampled ``leaves`` to ``|td_errors| + epsilon`` (raised to alpha)."""
        priorities = np.abs(np.asarray(td_errors, dtype=np.float64).reshape(-1)) + self.epsilon
        self.max_priority = max(self.max_priority, float(priorities.max()))
        self.tree.update(leaves, priorities**self.alpha)

    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None) -> ReplayBufferSamples:
        # Rows only, as SB3's sample() passes them: SB3 draws the env of each row itself.
        if self.n_steps > 1:
            return super()._get_samples(batch_inds, env)
        return ReplayBuffer._get_samples(self, batch_inds, env)

    def _get_samples_of_envs(self, rows: np.ndarray, env_indices: np.ndarray, env: VecNormalize | None) -> ReplayBufferSamples:
        """
        SB3's ``_get_samples`` for given (row, env) pairs, grouped by env. SB3 draws the env index of each row at
        random; with one env it draws from ``randint(0, 1)``, which is always 0 and consumes no random numbers. So
        each env's rows are gathered by SB3's own code on a one-env view of the storage (numpy views, no copies).
        """
        if self.n_envs == 1:
            return self._get_samples(rows, env)
        parts = []
        for env_index in np.unique(env_indices):
            with self._one_env_view(int(env_index)):
                parts.append(self._get_samples(rows[env_indices == env_index], env))
        return ReplayBufferSamples(
            *(None if tensors[0] is None else th.cat(tensors) for tensors in zip(*parts, strict=True))  # type: ignore[arg-type]
        )

    @contextlib.contextmanager
    def _one_env_view(self, env_index: int) -> Iterator[None]:
        """Within the block, the storage arrays are views of env ``env_index`` alone and ``n_envs`` is 1."""
        # With optimize_memory_usage SB3 never creates next_observations (the next row's observation is the next one).
        saved = {name: getattr(self, name) for name in _PER_ENV_ARRAYS if hasattr(self, name)}
        n_envs = self.n_envs
        try:
            for name, array in saved.items():
                setattr(self, name, array[:, env_index : env_index + 1])
            self.n_envs = 1
            yield
        finally:
            for name, array in saved.items():
                setattr(self, name, array)
            self.n_envs = n_envs


# The arrays of shape (buffer_size, n_envs, ...) that SB3's _get_samples indexes by env.
_PER_ENV_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def check_prioritized_arguments(
    observation_space: spaces.Space,
    optimize_memory_usage: bool,
    n_steps: int,
    alpha: float,
    beta: float,
    final_beta: float,
    epsilon: float,
) -> None:
    """Refuse what :class:`PrioritizedReplayBuffer` cannot do, before any memory is allocated."""
    if isinstance(observation_space, spaces.Dict):
        raise ValueError("PrioritizedReplayBuffer stores array observations; Dict observation spaces are not supported")
    if optimize_memory_usage and n_steps > 1:
        raise ValueError("optimize_memory_usage only works with n_steps=1 (as SB3's NStepReplayBuffer)")
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, not {alpha}")
    if not (0 <= beta <= 1 and 0 <= final_beta <= 1):
        raise ValueError(f"beta and final_beta must lie in [0, 1], not {beta} and {final_beta}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, not {epsilon}")


def truncate_last_transitions(replay_buffer: ReplayBuffer | None) -> None:
    """
    Mark the newest stored transition of every env as the end of its episode (a truncation), because collection is
    about to restart from a fresh ``reset()`` (a new ``learn`` with ``reset_num_timesteps=True``, or the first
    ``learn`` after ``load``): otherwise n-step returns (``NStepReplayBuffer``, :class:`PrioritizedReplayBuffer`)
    chain that transition into the new episode's first steps.

    A truncation, not a termination: the transition keeps its own next observation to bootstrap from (1-step targets
    are unchanged), and n-step returns stop there. With ``optimize_memory_usage`` that next observation is the row
    the new episode's first observation overwrites, so the transition becomes terminal instead, as SB3 does on
    ``reset_num_timesteps=True`` (https://github.com/DLR-RM/stable-baselines3/issues/46). ``HerReplayBuffer``
    tracks episodes itself and is left alone.
    """
    if replay_buffer is None or isinstance(replay_buffer, HerReplayBuffer):
        return
    if replay_buffer.pos == 0 and not replay_buffer.full:
        return  # empty
    last = (replay_buffer.pos - 1) % replay_buffer.buffer_size
    if replay_buffer.optimize_memory_usage:
        replay_buffer.dones[last] = 1.0
    else:
        replay_buffer.timeouts[last] = np.maximum(replay_buffer.timeouts[last], 1.0 - replay_buffer.dones[last])


def with_model_n_steps(
    replay_buffer_class: type[ReplayBuffer] | None, replay_buffer_kwargs: dict[str, Any], n_steps: int, gamma: float
) -> dict[str, Any]:
    """
    The keyword arguments for the replay buffer: a :class:`PrioritizedReplayBuffer` or a
    :class:`~sb3_parallel_dqn.FrameReplayBuffer` (``takes_model_n_steps``) computes n-step returns itself
    and gets the model's ``n_steps`` and ``gamma`` unless ``replay_buffer_kwargs`` set them (SB3 only hands them to
    the buffer it picks itself), in a new dict (the user's own must not change).
    """
    if getattr(replay_buffer_class, "takes_model_n_steps", False):
        return {"n_steps": n_steps, "gamma": gamma, **replay_buffer_kwargs}
    return replay_buffer_kwargs
