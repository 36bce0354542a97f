"""Double DQN targets (``double_q=True``): the online network picks the next action, the target network scores it."""

import pytest
import torch as th
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from torch.nn import functional as F

from sb3_parallel_dqn import ConfigError, ParallelDQN
from sb3_parallel_dqn.losses import td_loss


def _hand_built_batch(n: int = 64) -> ReplayBufferSamples:
    generator = th.Generator().manual_seed(0)
    return ReplayBufferSamples(
        observations=th.randn(n, 4, generator=generator),
        actions=th.randint(0, 2, (n, 1), generator=generator),
        next_observations=th.randn(n, 4, generator=generator),
        dones=(th.rand(n, 1, generator=generator) < 0.3).float(),
        rewards=th.rand(n, 1, generator=generator),
    )


def test_double_q_target_on_a_hand_built_batch():
    model = ParallelDQN("MlpPolicy", "CartPole-v1", double_q=True, gamma=0.9, seed=0, policy_kwargs={"net_arch": [8]})
    with th.no_grad():  # a target network that disagrees with the online one
        for param in model.q_net_target.parameters():
            param.add_(th.randn_like(param))
    batch = _hand_built_batch()
    with th.no_grad():
        online_next, target_next = model.q_net(batch.next_observations), model.q_net_target(batch.next_observations)
    picked = online_next.argmax(dim=1)
    assert (picked != target_next.argmax(dim=1)).any()  # so that the two targets below differ
    current = model.q_net(batch.observations).gather(1, batch.actions)

    double_target = batch.rewards + (1 - batch.dones) * 0.9 * target_next[th.arange(len(picked)), picked].reshape(-1, 1)
    loss, td_errors = td_loss(model.q_net, model.q_net_target, batch, model.gamma, model.double_q)
    assert th.allclose(loss, F.smooth_l1_loss(current, double_target)) and td_errors is None

    # SB3's vanilla target: the target network's max
    vanilla_target = batch.rewards + (1 - batch.dones) * 0.9 * target_next.max(dim=1).values.reshape(-1, 1)
    loss, _ = td_loss(model.q_net, model.q_net_target, batch, model.gamma, double_q=False)
    assert th.allclose(loss, F.smooth_l1_loss(current, vanilla_target))
    assert not th.allclose(double_target, vanilla_target)


def test_double_q_trains_saves_and_loads(tmp_path):
    model = ParallelDQN("MlpPolicy", "CartPole-v1", double_q=True, learning_starts=100, buffer_size=1000, seed=0,
                        policy_kwargs={"net_arch": [16]})  # fmt: skip
    model.learn(600)
    assert model._n_updates > 0
    model.save(tmp_path / "double")
    assert ParallelDQN.load(tmp_path / "double").double_q is True
    assert ParallelDQN("MlpPolicy", "CartPole-v1").double_q is False  # off by default: SB3's DQN


def test_double_q_must_be_a_bool():
    with pytest.raises(ConfigError, match="double_q"):
        ParallelDQN("MlpPolicy", "CartPole-v1", double_q="yes")
