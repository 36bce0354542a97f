"""With one process, ParallelDQN is SB3's DQN: same seed and settings give the same weights."""

import numpy as np
import pytest
import torch as th
from stable_baselines3 import DQN
from stable_baselines3.common.env_util import make_vec_env

from sb3_parallel_dqn import ParallelDQN

SETTINGS = {
    "learning_starts": 500,
    "target_update_interval": 250,
    "train_freq": 4,
    "gradient_steps": 2,
    "buffer_size": 5_000,
    "exploration_fraction": 0.3,
    "policy_kwargs": {"net_arch": [32, 32]},
    "seed": 3,
}


@pytest.mark.parametrize("n_envs", [1, 2])
def test_same_weights_as_sb3_dqn(n_envs):
    def env():
        return "CartPole-v1" if n_envs == 1 else make_vec_env("CartPole-v1", n_envs=n_envs)

    sb3 = DQN("MlpPolicy", env(), **SETTINGS).learn(3_000)
    ours = ParallelDQN("MlpPolicy", env(), **SETTINGS).learn(3_000)

    assert ours._learner.update.flat_adam  # the flat update (a stock Adam over one flat tensor) was the one used
    assert ours.num_timesteps == sb3.num_timesteps
    assert ours._n_updates == sb3._n_updates > 500
    assert ours.exploration_rate == sb3.exploration_rate
    sb3_state, our_state = sb3.policy.state_dict(), ours.policy.state_dict()
    assert sb3_state.keys() == our_state.keys()
    for name in sb3_state:
        assert th.equal(sb3_state[name], our_state[name]), name
    optimizer_states = sb3.policy.optimizer.state_dict()["state"], ours.policy.optimizer.state_dict()["state"]
    for index in optimizer_states[0]:
        for key in ("exp_avg", "exp_avg_sq"):
            assert th.equal(optimizer_states[0][index][key], optimizer_states[1][index][key])


def test_lean_action_selection_is_used_and_picks_the_greedy_action():
    """After learning_starts, collection skips SB3's generic predict(); its greedy action is predict()'s."""
    model = ParallelDQN("MlpPolicy", "CartPole-v1", learning_starts=0, exploration_initial_eps=0.0,
                        exploration_final_eps=0.0, seed=1, policy_kwargs={"net_arch": [16]})  # fmt: skip
    model.learn(64)
    for _ in range(20):
        observation = model._last_obs
        fast = model._collector.greedy_or_random(n_envs=1)
        assert fast is not None
        expected, _ = model.predict(observation, deterministic=True)
        assert np.array_equal(fast, expected) and fast.dtype == expected.dtype
        model._last_obs, *_ = model.env.step(fast)
    model.num_timesteps, model.learning_starts = 0, 10  # before learning_starts: SB3's own path (random actions)
    assert model._collector.greedy_or_random(n_envs=1) is None
