"""
FrameReplayBuffer (and its prioritized variant): samples equal SB3's ReplayBuffer's, element for element, for the
same transitions and random state, across episode ends, truncations, several envs, n-step returns and the ring
wrapping; each frame stored once; save/load; training identical to SB3's buffer.
"""

from __future__ import annotations

import json
import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import MPI_SCRIPTS, check_ok, run_mpi
from gymnasium import spaces
from stable_baselines3 import DQN
from stable_baselines3.common.buffers import NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack

from sb3_parallel_dqn import FrameReplayBuffer, ParallelDQN, PrioritizedFrameReplayBuffer, PrioritizedReplayBuffer
from sb3_parallel_dqn.buffers.memory import replay_buffer_nbytes


class FrameEnv(gym.Env):
    """Random 1 x 6 x 6 uint8 frames; episodes of 1 to `max_len` steps; `constant` frames make resets look alike."""

    def __init__(self, max_len: int = 9, constant: bool = False, channels: int = 1) -> None:
        self.observation_space = spaces.Box(0, 255, (channels, 6, 6), np.uint8)
        self.action_space = spaces.Discrete(3)
        self.max_len, self.constant = max_len, constant

    def _frame(self) -> np.ndarray:
        if self.constant:
            return np.full(self.observation_space.shape, 7, np.uint8)
        return self.np_random.integers(0, 256, self.observation_space.shape, dtype=np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.length, self.t = int(self.np_random.integers(1, self.max_len + 1)), 0
        return self._frame(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        return self._frame(), float(self.np_random.normal()), self.t >= self.length, False, {}


def make_stacked_env(n_envs: int, seed: int = 0, time_limit: int | None = 6, constant: bool = False, channels: int = 1):
    def make(i: int):
        def init() -> gym.Env:
            env: gym.Env = FrameEnv(constant=constant and i == 0, channels=channels)
            if time_limit is not None:
                env = gym.wrappers.TimeLimit(env, time_limit)  # truncations, with TimeLimit.truncated in infos
            return env

        return init

    env = VecFrameStack(DummyVecEnv([make(i) for i in range(n_envs)]), 4)
    env.seed(seed)
    return env


def fill(buffers: list[ReplayBuffer], env, n_steps: int, seed: int = 0) -> None:
    """Collect as SB3's _store_transition stores: next_obs is the terminal observation where an episode ended."""
    rng = np.random.default_rng(seed)
    obs = env.reset()
    for _ in range(n_steps):
        actions = rng.integers(0, 3, env.num_envs)
        new_obs, rewards, dones, infos = env.step(actions)
        next_obs = new_obs.copy()
        for i, done in enumerate(dones):
            if done and infos[i].get("terminal_observation") is not None:
                next_obs[i] = infos[i]["terminal_observation"]
        for buffer in buffers:
            buffer.add(obs, next_obs, actions, rewards, dones, infos)
        obs = new_obs


def assert_same_samples(a, b) -> None:
    for name, x, y in zip(a._fields, a, b, strict=True):
        if x is None or y is None:
            assert x is None and y is None, name
        else:
            assert th.equal(x, y), name


def sample_both(frame_buffer, reference, batch_size: int = 64, seed: int = 1):
    np.random.seed(seed)
    ours = frame_buffer.sample(batch_size)
    np.random.seed(seed)
    theirs = reference.sample(batch_size)
    return ours, theirs


@pytest.mark.parametrize("n_envs", [1, 3])
@pytest.mark.parametrize("n_steps", [1, 3])
@pytest.mark.parametrize("buffer_size", [30, 1000])  # wrapped many times, and not full
def test_samples_equal_sb3s_buffer(n_envs: int, n_steps: int, buffer_size: int) -> None:
    env = make_stacked_env(n_envs)
    space, actions = env.observation_space, env.action_space
    reference_class = NStepReplayBuffer if n_steps > 1 else ReplayBuffer
    kwargs = {"n_steps": n_steps, "gamma": 0.9} if n_steps > 1 else {}
    reference = reference_class(buffer_size * n_envs, space, actions, "cpu", n_envs=n_envs, **kwargs)
    ours = FrameReplayBuffer(buffer_size * n_envs, space, actions, "cpu", n_envs=n_envs, n_steps=n_steps, gamma=0.9)
    fill([reference, ours], env, 250)
    assert ours.size() == reference.size()
    assert reference.dones.any() and reference.timeouts.any()  # episode ends and truncations were stored
    # Every stored stack, both kinds, directly:
    rows, envs = np.divmod(np.arange(ours.size() * n_envs), n_envs)
    assert np.array_equal(ours.observations[rows, envs], reference.observations[rows, envs])
    assert np.array_equal(ours.next_observations[rows, envs], reference.next_observations[rows, envs])
    # And through sample(), with the same random state (SB3 draws rows, then envs):
    for seed in range(5):
        assert_same_samples(*sample_both(ours, reference, seed=seed))


def test_look_alike_resets_several_channels_and_saved_buffers() -> None:
    """Frames that repeat (a reset equal to the last next observation), 3 channels per frame, pickling."""
    env = make_stacked_env(2, constant=True, channels=3)
    reference = ReplayBuffer(40, env.observation_space, env.action_space, "cpu", n_envs=2)
    ours = FrameReplayBuffer(40, env.observation_space, env.action_space, "cpu", n_envs=2)
    fill([reference, ours], env, 120)
    loaded = pickle.loads(pickle.dumps(ours))
    fill([reference, ours, loaded], env, 37, seed=5)  # the loaded copy goes on exactly as the original
    for buffer in (ours, loaded):
        for seed in range(3):
            assert_same_samples(*sample_both(buffer, reference, seed=seed))


def test_each_frame_stored_once() -> None:
    """1M Atari transitions (4 x 84 x 84) in <= 7.5 GB; here scaled down and measured on a filled buffer."""
    space = spaces.Box(0, 255, (4, 84, 84), np.uint8)
    per_transition = replay_buffer_nbytes(FrameReplayBuffer(10_000, space, spaces.Discrete(6), "cpu")) / 10_000
    assert 1e6 * per_transition <= 7.5e9
    # SB3's buffer: two stacks of four frames per transition.
    assert per_transition < ReplayBuffer(100, space, spaces.Discrete(6), "cpu").observations[0, 0].nbytes * 2 / 7
    # Frames kept aside (terminal observations, paddings) stay few when episodes are long, and are reused.
    env = make_stacked_env(1, time_limit=None)
    buffer = FrameReplayBuffer(200, env.observation_space, env.action_space, "cpu")
    fill([buffer], env, 3000)
    assert len(buffer.terminal_frames.blocks) <= 2 * np.count_nonzero(buffer.dones) + 8


def test_refuses_what_is_not_a_frame_stack() -> None:
    image = spaces.Box(0, 255, (4, 6, 6), np.uint8)
    with pytest.raises(ValueError, match="optimize_memory_usage"):
        FrameReplayBuffer(100, image, spaces.Discrete(2), optimize_memory_usage=True, handle_timeout_termination=False)
    with pytest.raises(ValueError, match="does not divide"):
        FrameReplayBuffer(100, spaces.Box(0, 255, (6, 6, 4), np.uint8), spaces.Discrete(2), frame_stack=4)
    with pytest.raises(ValueError, match="frame_stack"):
        FrameReplayBuffer(100, spaces.Box(0, 1, (8,)), spaces.Discrete(2))
    buffer = FrameReplayBuffer(100, image, spaces.Discrete(2), frame_stack=4)
    obs = np.random.randint(0, 256, (1, 4, 6, 6), dtype=np.uint8)
    with pytest.raises(ValueError, match="not obs shifted by one frame"):
        buffer.add(obs, obs[:, ::-1].copy(), np.array([0]), np.array([0.0]), np.array([False]), [{}])


@pytest.mark.parametrize("n_envs", [1, 2])
def test_prioritized_frame_buffer_samples_as_the_prioritized_buffer(n_envs: int) -> None:
    env = make_stacked_env(n_envs)
    kwargs = {"n_envs": n_envs, "n_steps": 3, "gamma": 0.9}
    reference = PrioritizedReplayBuffer(60, env.observation_space, env.action_space, "cpu", **kwargs)
    ours = PrioritizedFrameReplayBuffer(60, env.observation_space, env.action_space, "cpu", **kwargs)
    fill([reference, ours], env, 100)
    for buffer in (reference, ours):  # the same priorities on both
        np.random.seed(3)
        _, _, leaves = buffer.sample_prioritized(16)
        buffer.update_priorities(leaves, np.linspace(0.1, 3.0, 16))
    for seed in range(3):
        np.random.seed(seed)
        mine, my_weights, my_leaves = ours.sample_prioritized(32)
        np.random.seed(seed)
        theirs, their_weights, their_leaves = reference.sample_prioritized(32)
        assert_same_samples(mine, theirs)
        assert np.array_equal(my_leaves, their_leaves) and np.array_equal(my_weights, their_weights)


@pytest.mark.slow
def test_training_with_it_equals_training_with_sb3s_buffer(tmp_path) -> None:
    """SB3's DQN and ParallelDQN, one process: the same weights with either buffer, and a save/load round trip."""
    weights = {}
    for algo in (DQN, ParallelDQN):
        for buffer_class in (ReplayBuffer, FrameReplayBuffer):
            model = algo("MlpPolicy", make_stacked_env(1), learning_starts=50, buffer_size=300, batch_size=16,
                         train_freq=2, target_update_interval=40, seed=3, device="cpu",
                         replay_buffer_class=buffer_class, policy_kwargs={"net_arch": [16]})  # fmt: skip
            model.learn(500)
            weights[algo.__name__, buffer_class.__name__] = th.nn.utils.parameters_to_vector(model.policy.parameters())
            if algo is ParallelDQN and buffer_class is FrameReplayBuffer:
                model.save_replay_buffer(tmp_path / "replay")
                model.load_replay_buffer(tmp_path / "replay")
                assert isinstance(model.replay_buffer, FrameReplayBuffer) and model.replay_buffer.size() == 300
                model.learn(100, reset_num_timesteps=False)  # collection restarts after the load: a new run of rows
    for algo in ("DQN", "ParallelDQN"):
        assert th.equal(weights[algo, "ReplayBuffer"], weights[algo, "FrameReplayBuffer"]), algo


@pytest.mark.slow
def test_prioritized_frame_buffer_under_mpirun(tmp_path) -> None:
    """2 ranks, 2 frame-stacked envs each, 3-step prioritized replay: every batch equals a shadow
    PrioritizedReplayBuffer's, weights divided by the global max, identical weights, per-rank save/load."""
    check_ok(run_mpi([str(MPI_SCRIPTS / "frame_replay_scenario.py"), str(tmp_path)], timeout=240))
    infos = [json.loads((tmp_path / f"info_rank{rank}.json").read_text()) for rank in range(2)]
    for info in infos:
        assert info["compared"] > 100 and info["num_timesteps"] >= 1_600
        assert info["size_before"] == 150 and info["size_after"] == 150 and info["frames_shape"] == [150, 2, 1, 6, 6]
    # Every rank divided its weights by the largest over both ranks (the global max, step by step).
    assert infos[0]["divided_by"] == infos[1]["divided_by"]
    assert np.allclose(infos[0]["divided_by"], np.maximum(infos[0]["local_max"], infos[1]["local_max"]))
    weights = [np.load(tmp_path / f"weights_rank{rank}.npz") for rank in range(2)]
    for name in weights[0].files:
        assert np.array_equal(weights[0][name], weights[1][name]), name
