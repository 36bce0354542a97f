"""The dueling head (``policy_kwargs=dict(dueling=True)``) and the policies that offer it."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import DQN
from stable_baselines3.dqn import policies as sb3_policies
from stable_baselines3.dqn.policies import QNetwork

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.policies import CnnPolicy, DuelingQNetwork, MlpPolicy


def test_dueling_aggregation_against_its_definition():
    model = ParallelDQN("MlpPolicy", "CartPole-v1", policy_kwargs={"dueling": True, "net_arch": [32, 16]}, seed=0)
    q_net = model.q_net
    assert isinstance(q_net, DuelingQNetwork)
    obs = th.randn(50, 4)
    with th.no_grad():
        hidden = th.relu(q_net.trunk[2](th.relu(q_net.trunk[0](obs))))  # the shared layers, by hand
        value = hidden @ q_net.value_head.weight.T + q_net.value_head.bias
        advantages = hidden @ q_net.advantage_head.weight.T + q_net.advantage_head.bias
        expected = value + advantages - advantages.mean(dim=1, keepdim=True)
        q_values = q_net(obs)
    assert th.allclose(q_values, expected, atol=1e-6)
    assert th.allclose(q_values.mean(dim=1), value[:, 0], atol=1e-6)  # mean advantage 0: V is the mean Q
    assert th.equal(q_net._predict(obs), advantages.argmax(dim=1))  # the greedy action is the best advantage


@pytest.mark.parametrize("policy_kwargs", [None, {"dueling": False}])
def test_without_dueling_the_policy_is_sb3s_own(policy_kwargs):
    """SB3's policy class (so that model files load with stable-baselines3 alone), with SB3's weights."""
    ours = ParallelDQN("MlpPolicy", "CartPole-v1", seed=3, policy_kwargs=policy_kwargs)
    stock = DQN("MlpPolicy", "CartPole-v1", seed=3)
    assert ours.policy_class is sb3_policies.MlpPolicy and type(ours.q_net) is QNetwork
    assert "dueling" not in ours.policy_kwargs
    assert policy_kwargs in (None, {"dueling": False})  # the user's dict is left alone
    for name, tensor in stock.policy.state_dict().items():
        assert th.equal(ours.policy.state_dict()[name], tensor), name


def test_our_policy_classes_without_dueling_build_sb3s_network():
    model = ParallelDQN(MlpPolicy, "CartPole-v1", seed=3, policy_kwargs={"dueling": False})
    assert model.policy_class is MlpPolicy and type(model.q_net) is QNetwork and model.policy.dueling is False


def test_dueling_needs_a_dqn_policy_it_knows():
    class OtherPolicy(sb3_policies.DQNPolicy):
        pass

    with pytest.raises(ValueError, match="dueling=True needs"):
        ParallelDQN(OtherPolicy, "CartPole-v1", policy_kwargs={"dueling": True})


@pytest.mark.parametrize("net_arch", [[], [16]])
def test_cnn_policy_gets_a_dueling_head(net_arch):
    env = gym.make("CartPole-v1")
    observation_space = gym.spaces.Box(0, 255, (3, 36, 36), dtype=np.uint8)
    policy = CnnPolicy(
        observation_space, env.action_space, lambda _: 1e-3, dueling=True, net_arch=net_arch,
        features_extractor_kwargs={"features_dim": 32},
    )  # fmt: skip
    assert isinstance(policy.q_net, DuelingQNetwork) and isinstance(policy.q_net_target, DuelingQNetwork)
    assert policy.q_net.value_head.in_features == (net_arch[-1] if net_arch else 32)
    # separate online and target networks, features extractors included
    assert policy.q_net.features_extractor is not policy.q_net_target.features_extractor
    q_values = policy.q_net(th.randint(0, 256, (5, 3, 36, 36)).float())
    assert q_values.shape == (5, 2)


def test_dueling_trains_saves_and_loads(tmp_path):
    model = ParallelDQN(
        "MlpPolicy", "CartPole-v1", learning_starts=100, buffer_size=1000, train_freq=4, seed=0,
        policy_kwargs={"dueling": True, "net_arch": [16]},
    )  # fmt: skip
    before = {name: tensor.clone() for name, tensor in model.policy.state_dict().items()}
    model.learn(500)
    assert any(not th.equal(before[name], tensor) for name, tensor in model.policy.state_dict().items())
    model.save(tmp_path / "dueling")

    obs = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    for loaded in (ParallelDQN.load(tmp_path / "dueling"), DQN.load(tmp_path / "dueling")):  # stock SB3 loads it too
        assert isinstance(loaded.q_net, DuelingQNetwork) and loaded.policy.dueling is True
        for name, tensor in model.policy.state_dict().items():
            assert th.equal(loaded.policy.state_dict()[name], tensor), name
        np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
