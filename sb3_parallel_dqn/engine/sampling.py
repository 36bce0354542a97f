"""
Replay batches for all gradient steps of one ``train()`` call, drawn as SB3's ``ReplayBuffer.sample`` draws them.

SB3 samples one batch per gradient step: a ``np.random.randint`` for the transition indices, then
``_get_samples`` (another ``randint`` for the env indices, the gathers, n-step returns for ``NStepReplayBuffer``,
and one tensor copy per array). With one env per rank (``n_envs == 1``) the env-index draw ``randint(0, 1)``
consumes no random numbers, so one ``randint`` of size ``gradient_steps * batch_size`` gives exactly the indices of
the per-step draws, and one ``_get_samples`` call on all of them does every row's arithmetic as the per-step calls
would (it is row by row). The batches are then slices of those tensors: the same batches as SB3's, for a fraction
of the per-call overhead. With several envs per rank SB3 interleaves the two draws, and other buffer classes
(dict observations, HER, prioritized) sample their own way: those call ``sample()`` once per step.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from stable_baselines3.common.buffers import NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from sb3_parallel_dqn import compat

# Gather several steps' batches at once only while the gathered arrays stay this small (Atari frames would not).
MAX_GATHER_BYTES = 8 * 2**20

_BATCHED = (ReplayBuffer, NStepReplayBuffer)


def sample_batches(
    replay_buffer: ReplayBuffer, gradient_steps: int, batch_size: int, env: VecNormalize | None = None
) -> Iterator[ReplayBufferSamples]:
    """Yield ``gradient_steps`` batches of ``batch_size`` transitions, identical to as many ``sample()`` calls."""
    if type(replay_buffer) not in _BATCHED or replay_buffer.n_envs > 1:
        for _ in range(gradient_steps):
            yield replay_buffer.sample(batch_size, env=env)
        return
    batch_inds = _transition_indices(replay_buffer, gradient_steps * batch_size)
    bytes_per_transition = 2 * replay_buffer.observations[0, 0].nbytes + replay_buffer.actions[0, 0].nbytes + 16
    steps_per_gather = max(1, min(gradient_steps, MAX_GATHER_BYTES // (bytes_per_transition * batch_size)))
    for first in range(0, gradient_steps, steps_per_gather):
        n_steps = min(steps_per_gather, gradient_steps - first)
        samples = compat.get_samples(replay_buffer, batch_inds[first * batch_size : (first + n_steps) * batch_size], env)
        for step in range(n_steps):
            rows = slice(step * batch_size, (step + 1) * batch_size)
            yield ReplayBufferSamples(*(None if tensor is None else tensor[rows] for tensor in samples))  # type: ignore[arg-type]


def _transition_indices(replay_buffer: ReplayBuffer, size: int) -> np.ndarray:
    """``ReplayBuffer.sample``'s index draw (including the memory-optimised variant, which skips ``pos``)."""
    if replay_buffer.optimize_memory_usage:
        if replay_buffer.full:
            return (np.random.randint(1, replay_buffer.buffer_size, size=size) + replay_buffer.pos) % replay_buffer.buffer_size
        return np.random.randint(0, replay_buffer.pos, size=size)
    upper_bound = replay_buffer.buffer_size if replay_buffer.full else replay_buffer.pos
    return np.random.randint(0, upper_bound, size=size)
