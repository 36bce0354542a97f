"""
Replay batches for all gradient steps of one ``train()`` call, drawn as SB3's ``ReplayBuffer.sample`` draws them.

SB3 samples one batch per gradient step: two ``np.random.randint`` calls (transition indices, then env indices),
five fancy-indexing gathers and five tensor copies. For the plain ``ReplayBuffer`` this module makes the same
draws from numpy's global generator in the same order, so the batches are exactly SB3's, but with one gather and one
tensor conversion per array for the whole ``train()`` call where that fits in a few MiB. With one env per rank
(``n_envs == 1``) SB3's env-index draw ``randint(0, 1)`` consumes no random numbers, so all transition indices of
the call come from one ``randint`` of size ``gradient_steps * batch_size``, the same numbers as the per-step draws.
Other buffers (n-step, dict observations, HER, prioritized) and VecNormalize-normalised samples use ``sample()``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch as th
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

# Gather every step's batch at once only while the gathered arrays stay this small (Atari frames would not).
MAX_GATHER_BYTES = 8 * 2**20


def sample_batches(
    replay_buffer: ReplayBuffer, gradient_steps: int, batch_size: int, env: VecNormalize | None = None
) -> Iterator[ReplayBufferSamples]:
    """Yield ``gradient_steps`` batches of ``batch_size`` transitions, identical to as many ``sample()`` calls."""
    if type(replay_buffer) is not ReplayBuffer or env is not None:
        for _ in range(gradient_steps):
            yield replay_buffer.sample(batch_size, env=env)
        return
    if replay_buffer.n_envs > 1:
        # SB3 interleaves the env-index draw with the transition-index draw of each step: keep that order.
        for _ in range(gradient_steps):
            batch_inds = _transition_indices(replay_buffer, batch_size)
            env_inds = np.random.randint(0, high=replay_buffer.n_envs, size=(batch_size,))
            yield _gather(replay_buffer, batch_inds, env_inds)
        return
    batch_inds = _transition_indices(replay_buffer, gradient_steps * batch_size)
    bytes_per_transition = 2 * replay_buffer.observations[0, 0].nbytes + replay_buffer.actions[0, 0].nbytes + 8
    steps_per_gather = max(1, min(gradient_steps, MAX_GATHER_BYTES // (bytes_per_transition * batch_size)))
    for first in range(0, gradient_steps, steps_per_gather):
        n_steps = min(steps_per_gather, gradient_steps - first)
        inds = batch_inds[first * batch_size : (first + n_steps) * batch_size]
        batches = _gather(replay_buffer, inds, np.zeros_like(inds))
        for step in range(n_steps):
            yield ReplayBufferSamples(*(tensor[step * batch_size : (step + 1) * batch_size] for tensor in batches[:5]))


def _transition_indices(replay_buffer: ReplayBuffer, size: int) -> np.ndarray:
    """``ReplayBuffer.sample``'s index draw (including the memory-optimised variant, which skips ``pos``)."""
    if replay_buffer.optimize_memory_usage:
        if replay_buffer.full:
            return (np.random.randint(1, replay_buffer.buffer_size, size=size) + replay_buffer.pos) % replay_buffer.buffer_size
        return np.random.randint(0, replay_buffer.pos, size=size)
    upper_bound = replay_buffer.buffer_size if replay_buffer.full else replay_buffer.pos
    return np.random.randint(0, upper_bound, size=size)


def _gather(replay_buffer: ReplayBuffer, batch_inds: np.ndarray, env_inds: np.ndarray) -> ReplayBufferSamples:
    """``ReplayBuffer._get_samples`` without VecNormalize, on indices drawn already."""
    rb = replay_buffer
    if rb.optimize_memory_usage:
        next_obs = rb.observations[(batch_inds + 1) % rb.buffer_size, env_inds, :]
    else:
        next_obs = rb.next_observations[batch_inds, env_inds, :]
    data = (
        rb.observations[batch_inds, env_inds, :],
        rb.actions[batch_inds, env_inds, :],
        next_obs,
        # Only use dones that are not due to timeouts
        (rb.dones[batch_inds, env_inds] * (1 - rb.timeouts[batch_inds, env_inds])).reshape(-1, 1),
        rb.rewards[batch_inds, env_inds].reshape(-1, 1),
    )
    # Fancy indexing made fresh arrays: wrap them instead of copying them once more (SB3's to_torch copies).
    return ReplayBufferSamples(*(th.as_tensor(array, device=rb.device) for array in data))
