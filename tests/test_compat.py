"""
Every SB3/torch internal that sb3_parallel_dqn relies on (sb3_parallel_dqn/compat.py), checked for existence and for
the behaviour relied on. After an SB3 or torch upgrade, a failure here names the internal that moved or changed.
"""

import inspect
import pickle
import re
import warnings

import gymnasium as gym
import numpy as np
import pytest
import stable_baselines3
import torch as th
from gymnasium import spaces
from stable_baselines3 import DQN
from stable_baselines3.common.buffers import NStepReplayBuffer, ReplayBuffer

from sb3_parallel_dqn import ParallelDQN, compat


def broken(internal: compat.Internal, problem: str) -> str:
    return str(internal.error(problem))


@pytest.mark.parametrize("internal", compat.INTERNALS, ids=lambda internal: internal.path)
def test_every_internal_still_exists(internal):
    try:
        internal.resolve()
    except compat.CompatibilityError as error:
        pytest.fail(str(error))


def test_a_moved_internal_is_named_in_the_error():
    gone = compat.Internal("stable_baselines3.common.vec_env.subproc_vec_env:_no_such_worker", "the worker loop")
    with pytest.raises(compat.CompatibilityError, match=r"subproc_vec_env:_no_such_worker is gone .* the worker loop"):
        gone.resolve()


def test_subproc_worker_takes_the_arguments_we_pass():
    parameters = list(inspect.signature(compat.subproc_worker()).parameters)
    assert parameters == ["remote", "parent_remote", "env_fn_wrapper"], broken(compat.SUBPROC_WORKER, f"takes {parameters}")
    wrapper = compat.cloudpickle_wrapper(lambda: gym.make("CartPole-v1"))
    assert pickle.loads(pickle.dumps(wrapper)).var().action_space.n == 2, broken(compat.CLOUDPICKLE_WRAPPER, "changed")


def test_patch_env_keeps_a_gymnasium_env():
    env = gym.make("CartPole-v1")
    assert compat.patch_env(env) is env, broken(compat.PATCH_ENV, "wraps a gymnasium env")


def test_get_samples_is_row_wise_and_draws_no_random_numbers_with_one_env():
    space = spaces.Box(-10, 10, shape=(2,), dtype=np.float32)
    for buffer_class, kwargs in ((ReplayBuffer, {}), (NStepReplayBuffer, {"n_steps": 3, "gamma": 0.9})):
        buffer = buffer_class(50, space, spaces.Discrete(2), device="cpu", **kwargs)
        for row in range(30):
            obs = np.full((1, 2), row, dtype=np.float32)
            buffer.add(obs, obs + 0.5, np.array([[row % 2]]), np.array([float(row)]), np.array([row % 7 == 6]), [{}])
        rows = np.array([3, 17, 4, 22, 3])
        state = np.random.get_state()
        together = compat.get_samples(buffer, rows, None)
        assert np.random.get_state()[1].tolist() == state[1].tolist(), broken(compat.GET_SAMPLES, "draws random numbers")
        for index, row in enumerate(rows):  # one call for all rows == one call per row
            alone = compat.get_samples(buffer, np.array([row]), None)
            for name in ("observations", "next_observations", "rewards", "dones"):
                assert th.equal(getattr(together, name)[index], getattr(alone, name)[0]), broken(compat.GET_SAMPLES, name)


class RecordingArray:
    """Stands where SB3 keeps its observation arrays; records how they are indexed."""

    def __init__(self, array: np.ndarray, keys: list) -> None:
        self.array, self.keys = array, keys

    def __getitem__(self, key):
        self.keys.append(("get", tuple(type(part).__name__ for part in (key if isinstance(key, tuple) else (key,)))))
        return self.array[key]

    def __setitem__(self, key, value):
        self.keys.append(("set", type(key).__name__))
        self.array[key] = value


@pytest.mark.parametrize("buffer_class", [ReplayBuffer, NStepReplayBuffer])
def test_observations_are_reached_only_as_frame_replay_expects(buffer_class):
    space = spaces.Box(0, 255, shape=(4, 3, 3), dtype=np.uint8)
    buffer = buffer_class(20, space, spaces.Discrete(2), device="cpu", n_envs=2)
    keys: list = []
    buffer.observations = RecordingArray(buffer.observations, keys)
    buffer.next_observations = RecordingArray(buffer.next_observations, keys)
    for _ in range(8):
        obs = np.zeros((2, 4, 3, 3), np.uint8)
        buffer.add(obs, obs, np.array([0, 1]), np.array([1.0, 0.0]), np.array([False, False]), [{}, {}])
    buffer.sample(5)
    allowed = {("set", "int"), ("get", ("ndarray", "ndarray")), ("get", ("ndarray", "ndarray", "slice"))}
    assert keys and set(keys) <= allowed, broken(compat.OBSERVATION_GATHERS, f"indexes observations as {set(keys)}")


def test_the_n_steps_warning_is_recognised_and_silenced():
    def build():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            DQN("MlpPolicy", "CartPole-v1", n_steps=3, replay_buffer_class=NStepReplayBuffer, buffer_size=100)
        return [str(w.message) for w in caught]

    messages = build()
    # SB3 2.8 ignores n_steps with a custom buffer class silently (nothing to silence); 2.9 warns with this text.
    if any("n_steps" in m for m in messages) or not stable_baselines3.__version__.startswith("2.8."):
        assert any(re.search(compat.N_STEPS_IGNORED_MESSAGE, m) for m in messages), broken(
            compat.N_STEPS_IGNORED_WARNING, f"no longer warns with that text: {messages}"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with compat.n_steps_warning_silenced(NStepReplayBuffer, {"n_steps": 3}, 3):
            DQN("MlpPolicy", "CartPole-v1", n_steps=3, replay_buffer_class=NStepReplayBuffer, buffer_size=100,
                replay_buffer_kwargs={"n_steps": 3})  # fmt: skip
    assert not [w for w in caught if "is ignored because" in str(w.message)]


@pytest.mark.parametrize("name", sorted(compat.OVERRIDDEN_DQN_METHODS))
def test_overridden_dqn_methods_keep_their_signatures(name):
    relied_on = compat.OVERRIDDEN_DQN_METHODS[name]
    assert hasattr(DQN, name), f"DQN.{name} is gone; ParallelDQN overrides it, relying on: {relied_on}"
    theirs = list(inspect.signature(getattr(DQN, name)).parameters)
    ours = list(inspect.signature(getattr(ParallelDQN, name)).parameters)
    assert ours == theirs, f"DQN.{name} now takes {theirs}, ParallelDQN's override {ours}; it relies on: {relied_on}"


class RecordingDQN(DQN):
    """SB3's DQN, recording the order in which collect_rollouts calls the methods ParallelDQN overrides."""

    events: list

    def _sample_action(self, learning_starts, action_noise=None, n_envs=1):
        self.events.append(("sample_action", self.num_timesteps))
        return super()._sample_action(learning_starts, action_noise, n_envs)

    def _on_step(self):
        self.events.append(("on_step", self.num_timesteps))
        super()._on_step()


def test_collect_rollouts_calls_in_the_order_relied_on():
    """_sample_action before env.step and before num_timesteps grows by n_envs; _on_step after it grew."""
    model = RecordingDQN("MlpPolicy", "CartPole-v1", learning_starts=0, train_freq=3, buffer_size=100)
    model.events = []
    model.learn(6)
    expected = [("sample_action", 0), ("on_step", 1), ("sample_action", 1), ("on_step", 2), ("sample_action", 2)]
    relied_on = {name: compat.OVERRIDDEN_DQN_METHODS[name] for name in ("_sample_action", "_on_step")}
    assert model.events[:5] == expected, (
        f"DQN.collect_rollouts changed the order of its calls: {model.events[:5]}; {relied_on}"
    )


def test_setup_learn_resets_the_envs_when_relied_on():
    model = DQN("MlpPolicy", "CartPole-v1", buffer_size=100)
    model.learn(4)
    kept = model._last_obs
    model.learn(4, reset_num_timesteps=False)  # continues the episodes
    model._last_obs = None
    model._setup_learn(4, reset_num_timesteps=False)
    assert model._last_obs is not None and kept is not None, (
        f"DQN._setup_learn no longer resets the envs as relied on: {compat.OVERRIDDEN_DQN_METHODS['_setup_learn']}"
    )


def test_protected_dqn_state_holds_what_the_accessors_rely_on():
    """Each entry of compat.PROTECTED_DQN_STATE, read on SB3's own DQN after a learn() (the failure names it)."""
    state = compat.PROTECTED_DQN_STATE
    model = DQN("MlpPolicy", "CartPole-v1", learning_starts=16, train_freq=4, gradient_steps=2, buffer_size=100)
    for name in state:
        assert hasattr(model, name), f"DQN.{name} is gone; relied on as: {state[name]}"
    model.learn(40)
    assert compat.total_timesteps(model) == 40, f"_total_timesteps: {state['_total_timesteps']}"
    assert compat.target_update_calls(model) == 40, f"_n_calls: {state['_n_calls']}"
    assert compat.n_updates(model) == 2 * len(range(20, 41, 4)), f"_n_updates: {state['_n_updates']}"
    observation = compat.last_observation(model)
    assert isinstance(observation, np.ndarray) and observation.shape == (1, 4), f"_last_obs: {state['_last_obs']}"
    assert compat.progress_remaining(model) == pytest.approx(0.0), (
        f"_current_progress_remaining: {state['_current_progress_remaining']}"
    )
    parameters = list(inspect.signature(model._update_current_progress_remaining).parameters)
    assert parameters == ["num_timesteps", "total_timesteps"], f"_update_current_progress_remaining takes {parameters}"
    model.num_timesteps = 10
    assert compat.refresh_progress(model) == pytest.approx(0.75), f"{state['_update_current_progress_remaining']}"
    compat.set_target_update_calls(model, 7)
    assert model._n_calls == 7
    episodes = model._episode_num
    assert isinstance(episodes, int), f"_episode_num: {state['_episode_num']}"
    compat.count_episodes(model, 3)
    assert model._episode_num == episodes + 3
