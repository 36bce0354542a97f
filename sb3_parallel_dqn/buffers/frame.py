"""
Replay for frame-stacked image observations that stores every frame once.

SB3's ``ReplayBuffer`` keeps each frame-stacked observation twice (``observations`` and ``next_observations``):
with 4 stacked 84x84 frames a transition costs 2 x 4 x 7056 bytes, so 1M Atari transitions take about 56 GB (about
28 GB with ``optimize_memory_usage``). Consecutive stacks share all but one frame, so :class:`FrameReplayBuffer`
keeps, per transition, only the newest frame of its observation (7056 bytes: 1M transitions in about 7.1 GB) and
rebuilds both stacks when sampled, as DQN's own replay memory did (Mnih et al. 2015,
https://www.nature.com/articles/nature14236; the lazy stacks of Dopamine's ``OutOfGraphReplayBuffer``).

What the stacks are made of, per env:

- ``frames[row]``: the newest frame of the observation stored at ``row``;
- ``ages[row]``: how many older frames of that stack are ``frames`` of the rows just before (0 at an episode start);
  the rest come from the *padding* of the first row of the run (``pad_slots``): what the frame stacker put in front
  of the episode's first frame (``VecFrameStack`` puts zeros, stored as no frames at all; anything else is stored);
- ``next_slots[row]``: the next observation's newest frame is ``frames[row + 1]`` when the next row continues the
  episode, else a frame kept aside (the terminal observation, or the last one before collection restarted), or,
  for the newest row, the latest ``next_obs`` itself.

Each ``add`` checks that the stack is a frame stack of the previous one (``next_obs`` is ``obs`` shifted by one
frame) and finds episode boundaries by comparing ``obs`` with the previous ``next_obs``, so it never depends on
``done`` flags or on how the stacker pads. When the ring wraps, the oldest surviving row gets its older frames as
padding before the frame it needs is overwritten. The stacks rebuilt at sample time are therefore exactly the arrays
that ``add`` was given: sampling returns what SB3's ``ReplayBuffer`` returns for the same transitions, element for
element, and consumes the same random numbers. One-step sampling is ``ReplayBuffer._get_samples`` line for line,
with both stacks from one gather; n-step and prioritized sampling run SB3's own ``_get_samples`` code on views that
rebuild stacks (:data:`sb3_parallel_dqn.compat.OBSERVATION_GATHERS` says what that relies on).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import BaseBuffer, NStepReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from sb3_parallel_dqn.buffers.prioritized import PrioritizedReplayBuffer, check_prioritized_arguments

# next_slots values that are not slots of the kept-aside frames
_CONTINUES = -1  # the next observation's newest frame is frames[row + 1]
_PENDING = -2  # the newest row: its next observation is the latest next_obs
# pad_slots value for a padding of zeros (VecFrameStack's), which takes no memory
_ZEROS = -1


class _FrameStore:
    """A growable array of frame blocks with a free list: the few frames that are no row's newest frame."""

    def __init__(self, block_shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.blocks = np.zeros((0, *block_shape), dtype=dtype)
        self.free: list[int] = []

    def put(self, block: np.ndarray) -> int:
        if not self.free:
            # Double the capacity (at least 8 blocks): as many episode ends as live rows in the worst case.
            grown = max(8, 2 * len(self.blocks))
            self.free = list(range(grown - 1, len(self.blocks) - 1, -1))
            self.blocks = np.concatenate(
                [self.blocks, np.zeros((grown - len(self.blocks), *self.blocks.shape[1:]), self.blocks.dtype)]
            )
        slot = self.free.pop()
        self.blocks[slot] = block
        return slot

    def release(self, slot: int) -> None:
        if slot >= 0:
            self.free.append(int(slot))

    @property
    def nbytes(self) -> int:
        return self.blocks.nbytes


class StackedFrames:
    """
    Stands for SB3's ``observations`` (or ``next_observations``) array of shape ``(buffer_size, n_envs, *obs_shape)``:
    indexing it with ``[rows, envs]`` or ``[rows, envs, :]`` (integer arrays, as SB3's ``_get_samples`` does) rebuilds
    those stacks. ``[:, e : e + 1]`` is the one-env view of env ``e`` that
    :class:`~sb3_parallel_dqn.PrioritizedReplayBuffer` samples through. Writes are refused: frames are stored by
    :meth:`FrameReplayBuffer.add` only.
    """

    def __init__(self, buffer: FrameReplayBuffer, next_observations: bool, env_offset: int = 0, n_envs: int | None = None):
        self.buffer = buffer
        self.next_observations = next_observations
        self.env_offset = env_offset
        self.n_envs = buffer.n_envs if n_envs is None else n_envs

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.buffer.buffer_size, self.n_envs, *self.buffer.obs_shape)

    @property
    def dtype(self) -> np.dtype:
        return self.buffer.frames.dtype

    def __getitem__(self, key: Any) -> Any:
        if not isinstance(key, tuple) or len(key) not in (2, 3) or (len(key) == 3 and key[2] != slice(None)):
            raise IndexError(f"stacked frames are indexed [rows, envs] with integer arrays, not {key!r}")
        rows, envs = key[0], key[1]
        if isinstance(rows, slice) and rows == slice(None) and isinstance(envs, slice):
            start, stop, _ = envs.indices(self.n_envs)
            return StackedFrames(self.buffer, self.next_observations, self.env_offset + start, stop - start)
        envs = np.asarray(envs) + self.env_offset
        return self.buffer.stacks(np.asarray(rows), envs, self.next_observations)

    def __setitem__(self, key: Any, value: Any) -> None:
        raise TypeError("stacked frames are rebuilt from stored frames: store them with FrameReplayBuffer.add")

    @property
    def nbytes(self) -> int:
        return 0  # the frames are counted once, by the buffer's own arrays


class FrameReplayBuffer(NStepReplayBuffer):
    """
    SB3's ``ReplayBuffer`` for frame-stacked image observations, storing each frame once (see the module docstring).

    A drop-in ``replay_buffer_class`` with ``ReplayBuffer``'s arguments for observations of shape
    ``(frame_stack * C, H, W)``, channel first, as SB3's Atari pipeline produces them (``AtariWrapper``, then
    ``VecFrameStack``, then ``VecTransposeImage``, which DQN adds itself). Sampling equals ``ReplayBuffer``'s (with
    ``n_steps > 1``, ``NStepReplayBuffer``'s) for the same transitions and random state, element for element. 1M
    transitions of 4 x 84 x 84 frames take 7.1 GB of arrays, against about 56 GB for ``ReplayBuffer``.

    :param buffer_size: Max number of element in the buffer
    :param observation_space: Observation space: a ``Box`` of shape ``(frame_stack * C, H, W)``
    :param action_space: Action space
    :param device: PyTorch device
    :param n_envs: Number of parallel environments
    :param optimize_memory_usage: Not supported (each frame is stored once already); must be False
    :param handle_timeout_termination: Handle timeout termination (due to timelimit)
        separately and treat the task as infinite horizon task.
    :param n_steps: Number of steps to accumulate rewards for n-step returns (1: one-step transitions, as
        ``ReplayBuffer``; ``ParallelDQN`` passes its own ``n_steps`` and ``gamma``)
    :param gamma: Discount factor for future rewards (used when ``n_steps > 1``)
    :param frame_stack: Number of frames in each observation (``VecFrameStack``'s ``n_stack``)
    """

    # ParallelDQN hands this class its own n_steps and gamma (see prioritized_replay.with_model_n_steps)
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
        frame_stack: int = 4,
    ) -> None:
        self._check_arguments(buffer_size, observation_space, optimize_memory_usage, n_envs, frame_stack)
        # ReplayBuffer.__init__ would allocate both observation arrays: set up the rest as it does.
        BaseBuffer.__init__(self, buffer_size, observation_space, action_space, device, n_envs=n_envs)
        self.buffer_size = max(buffer_size // n_envs, 1)
        self.optimize_memory_usage = False
        self.actions = np.zeros(
            (self.buffer_size, self.n_envs, self.action_dim), dtype=self._maybe_cast_dtype(action_space.dtype)
        )
        self.rewards = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        self.dones = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        self.handle_timeout_termination = handle_timeout_termination
        self.timeouts = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        self.n_steps = n_steps
        self.gamma = gamma

        self.frame_stack = frame_stack
        channels = self.obs_shape[0] // frame_stack
        self.frame_shape = (channels, *self.obs_shape[1:])
        dtype = np.dtype(observation_space.dtype)
        self.frames = np.zeros((self.buffer_size, self.n_envs, *self.frame_shape), dtype=dtype)
        self.ages = np.zeros((self.buffer_size, self.n_envs), dtype=np.uint8)
        self.next_slots = np.full((self.buffer_size, self.n_envs), _PENDING, dtype=np.int32)
        self.pad_slots = np.full((self.buffer_size, self.n_envs), _ZEROS, dtype=np.int32)
        self.terminal_frames = _FrameStore(self.frame_shape, dtype)
        self.paddings = _FrameStore((frame_stack - 1, *self.frame_shape), dtype)
        # The latest next_obs of each env: the newest row's next observation, and what the next obs should equal.
        self.latest_next_obs = np.zeros((self.n_envs, *self.obs_shape), dtype=dtype)
        self.observations = StackedFrames(self, next_observations=False)  # type: ignore[assignment]
        self.next_observations = StackedFrames(self, next_observations=True)  # type: ignore[assignment]

    @staticmethod
    def _check_arguments(
        buffer_size: int, observation_space: spaces.Space, optimize_memory_usage: bool, n_envs: int, frame_stack: int
    ) -> None:
        if optimize_memory_usage:
            raise ValueError("FrameReplayBuffer stores each frame once already: use it with optimize_memory_usage=False")
        if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 3:
            raise ValueError(
                f"FrameReplayBuffer needs image observations of shape (frame_stack * C, H, W), not {observation_space}"
            )
        if frame_stack < 1 or observation_space.shape[0] % frame_stack:
            raise ValueError(
                f"frame_stack={frame_stack} does not divide the {observation_space.shape[0]} channels of "
                f"{observation_space.shape}: observations must be channel first, (frame_stack * C, H, W)"
            )
        if max(buffer_size // n_envs, 1) <= frame_stack:
            raise ValueError(f"buffer_size per env ({buffer_size} // {n_envs}) must exceed frame_stack={frame_stack}")

    # -----------------------------------------------------------------------------------------------------------------
    # Storing
    # -----------------------------------------------------------------------------------------------------------------

    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        obs = np.asarray(obs).reshape((self.n_envs, *self.obs_shape))
        next_obs = np.asarray(next_obs).reshape((self.n_envs, *self.obs_shape))
        channels = self.frame_shape[0]
        if not np.array_equal(next_obs[:, :-channels], obs[:, channels:]):
            raise ValueError(
                f"next_obs is not obs shifted by one frame: FrameReplayBuffer needs frame-stacked, channel-first "
                f"observations of frame_stack={self.frame_stack} frames of {channels} channel(s) each "
                "(VecFrameStack, then VecTransposeImage for channel-last images)"
            )
        row = self.pos
        has_previous = self.full or row > 0
        for env in range(self.n_envs):
            if self.full:
                self._forget_row(row, env)
            if has_previous:
                self._link(row, env, obs[env])
            else:
                self._start_run(row, env, obs[env])
            self.frames[row, env] = obs[env, -channels:]
            self.next_slots[row, env] = _PENDING
            self.latest_next_obs[env] = next_obs[env]
        # The rest is ReplayBuffer.add's bookkeeping, line for line, without its two stack copies (np.array(obs) and
        # np.array(next_obs): 2 x 28 KB per env per Atari step into views that would ignore them).
        self.actions[self.pos] = np.array(action).reshape((self.n_envs, self.action_dim))
        self.rewards[self.pos] = np.array(reward)
        self.dones[self.pos] = np.array(done)
        if self.handle_timeout_termination:
            self.timeouts[self.pos] = np.array([info.get("TimeLimit.truncated", False) for info in infos])
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full = True
            self.pos = 0

    def _link(self, row: int, env: int, obs: np.ndarray) -> None:
        """Store how ``row`` follows the previous row: as the same episode, or as the start of a new run."""
        previous = (row - 1) % self.buffer_size
        if np.array_equal(obs, self.latest_next_obs[env]):
            self.next_slots[previous, env] = _CONTINUES
            self.ages[row, env] = min(int(self.ages[previous, env]) + 1, self.frame_stack - 1)
            self.pad_slots[row, env] = _ZEROS
        else:
            # An episode ended (or collection restarted): keep the previous row's next frame aside.
            channels = self.frame_shape[0]
            self.next_slots[previous, env] = self.terminal_frames.put(self.latest_next_obs[env, -channels:])
            self._start_run(row, env, obs)

    def _start_run(self, row: int, env: int, obs: np.ndarray) -> None:
        """``row`` starts a run of rows: its older frames are its own padding."""
        self.ages[row, env] = 0
        self.pad_slots[row, env] = self._padding_slot(obs[: -self.frame_shape[0]])

    def _padding_slot(self, older: np.ndarray) -> int:
        if self.frame_stack == 1 or not older.any():
            return _ZEROS
        return self.paddings.put(older.reshape(self.frame_stack - 1, *self.frame_shape))

    def _forget_row(self, row: int, env: int) -> None:
        """
        Before ``row`` (the oldest) is overwritten: release what it kept aside, and give the rows that take older
        frames from it (at most ``frame_stack - 1``, the oldest survivors) those frames as padding instead.
        """
        oldest = (row + 1) % self.buffer_size
        if self.ages[oldest, env] > 0:
            # Rebuilt before anything of `row` is released or overwritten.
            stack = self.stacks(np.array([oldest]), np.array([env]), next_observations=False)[0]
            self.pad_slots[oldest, env] = self._padding_slot(stack[: -self.frame_shape[0]])
            for offset in range(self.frame_stack - 1):
                later = (oldest + offset) % self.buffer_size
                self.ages[later, env] = min(int(self.ages[later, env]), offset)
        self.terminal_frames.release(int(self.next_slots[row, env]))
        self.paddings.release(int(self.pad_slots[row, env]))

    # -----------------------------------------------------------------------------------------------------------------
    # Rebuilding stacks
    # -----------------------------------------------------------------------------------------------------------------

    def stacks(self, rows: np.ndarray, envs: np.ndarray, next_observations: bool) -> np.ndarray:
        """The observations (or next observations) stored at ``rows`` of ``envs``, shape ``(len(rows), *obs_shape)``."""
        rows, envs = rows.reshape(-1), envs.reshape(-1)
        if envs.shape != rows.shape:
            rows, envs = np.broadcast_arrays(rows, envs)
        # How far back each position of the stack lies from the row's own frame; a next observation is the
        # observation without its oldest frame, plus the next row's frame (-1), fixed up where it is not.
        backs = np.arange(self.frame_stack - 1, -1, -1) - int(next_observations)
        out = self._frames_back(rows, envs, backs, with_next_frame=next_observations)
        return out.reshape(len(rows), *self.obs_shape)

    def stack_pairs(self, rows: np.ndarray, envs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """
        ``(stacks(rows, envs, False), stacks(rows, envs, True))`` from one gather of ``frame_stack + 1`` frames per
        row: the two stacks share all but one frame.
        """
        frames = self._frames_back(rows, envs, np.arange(self.frame_stack - 1, -2, -1), with_next_frame=True)
        shape = (len(rows), *self.obs_shape)
        return frames[:, :-1].reshape(shape), frames[:, 1:].reshape(shape)

    def _frames_back(self, rows: np.ndarray, envs: np.ndarray, backs: np.ndarray, with_next_frame: bool) -> np.ndarray:
        """
        Frames ``backs`` rows before ``rows`` in their runs, shape ``(len(rows), len(backs), *frame_shape)``; with
        ``with_next_frame``, ``backs[-1]`` is -1 and is each row's next observation's newest frame.
        """
        depth = self.frame_stack
        # One gather for the common case (the whole stack in rows of the same run), as SB3's one gather per stack.
        # A 1-d index into the frames seen as (rows * envs, frame) is about twice as fast as numpy's 2-d fancy
        # indexing of (row, env) pairs (a reshape of the contiguous array: no copy). frames.shape, not n_envs:
        # PrioritizedReplayBuffer samples through one-env views of itself.
        stored_envs = self.frames.shape[1]
        flat_frames = self.frames.reshape(self.buffer_size * stored_envs, -1)
        flat_index = ((rows[:, None] - backs) % self.buffer_size) * stored_envs + envs[:, None]
        out = flat_frames[flat_index.reshape(-1)].reshape(len(rows), len(backs), *self.frame_shape)
        ages = self.ages[rows, envs]
        padded = backs > ages[:, None]
        if padded.any():
            # Frames from before the start of the run: the start row's padding (its stack is this one shifted by
            # the row's age), or zeros.
            sample, position = np.nonzero(padded)
            age = ages[sample].astype(np.int64)
            slots = self.pad_slots[(rows[sample] - age) % self.buffer_size, envs[sample]]
            values = np.zeros((len(slots), *self.frame_shape), dtype=self.frames.dtype)
            stored = slots != _ZEROS
            values[stored] = self.paddings.blocks[slots[stored], (depth - 1 - backs[position] + age)[stored]]
            out[sample, position] = values
        if with_next_frame:
            # frames[row + 1] is the next frame only where the next row continues the episode
            slots = self.next_slots[rows, envs]
            aside = slots >= 0
            if aside.any():
                out[aside, -1] = self.terminal_frames.blocks[slots[aside]]
            pending = slots == _PENDING
            if pending.any():
                out[pending, -1] = self.latest_next_obs[envs[pending], -self.frame_shape[0] :]
        return out

    # -----------------------------------------------------------------------------------------------------------------
    # Sampling: SB3's code, on the stacked views
    # -----------------------------------------------------------------------------------------------------------------

    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None) -> ReplayBufferSamples:
        if self.n_steps > 1:
            return NStepReplayBuffer._get_samples(self, batch_inds, env)
        # ReplayBuffer._get_samples, line for line (the same random draw, arrays and order), but with both stacks
        # from one gather: on the views it would rebuild each stack separately, about 1.15x SB3's sampling time.
        env_indices = np.random.randint(0, high=self.n_envs, size=(len(batch_inds),))
        obs, next_obs = self.stack_pairs(batch_inds, env_indices)
        data = (
            self._normalize_obs(obs, env),
            self.actions[batch_inds, env_indices, :],
            self._normalize_obs(next_obs, env),
            (self.dones[batch_inds, env_indices] * (1 - self.timeouts[batch_inds, env_indices])).reshape(-1, 1),
            self._normalize_reward(self.rewards[batch_inds, env_indices].reshape(-1, 1), env),
        )
        return ReplayBufferSamples(*tuple(map(self.to_torch, data)))


class PrioritizedFrameReplayBuffer(PrioritizedReplayBuffer, FrameReplayBuffer):
    """
    :class:`~sb3_parallel_dqn.PrioritizedReplayBuffer` on :class:`FrameReplayBuffer`'s storage: prioritized replay
    with n-step returns (Rainbow's replay, https://arxiv.org/abs/1710.02298) for frame-stacked images, each frame stored
    once. The arguments are those of both.
    """

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
        frame_stack: int = 4,
    ) -> None:
        check_prioritized_arguments(observation_space, optimize_memory_usage, n_steps, alpha, beta, final_beta, epsilon)
        FrameReplayBuffer.__init__(
            self, buffer_size, observation_space, action_space, device, n_envs, optimize_memory_usage,
            handle_timeout_termination, n_steps, gamma, frame_stack,
        )  # fmt: skip
        self._init_priorities(alpha, beta, final_beta, epsilon)
