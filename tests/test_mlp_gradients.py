"""The hand-written backward of the MLP Q-network gives autograd's TD loss, TD errors and gradients, bit for bit."""

import pytest
import torch as th
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.distributed.gradients import attach_flat_grads
from sb3_parallel_dqn.engine.mlp_gradients import mlp_td_gradients
from sb3_parallel_dqn.engine.q_forward import q_forward
from sb3_parallel_dqn.losses import td_loss, td_target


def _batch(n: int, obs_dim: int, n_actions: int, seed: int) -> ReplayBufferSamples:
    generator = th.Generator().manual_seed(seed)
    return ReplayBufferSamples(
        observations=th.randn(n, obs_dim, generator=generator) * 3,
        actions=th.randint(0, n_actions, (n, 1), generator=generator),
        next_observations=th.randn(n, obs_dim, generator=generator) * 3,
        dones=(th.rand(n, 1, generator=generator) < 0.2).float(),
        # Large rewards now and then, so that some TD errors are in the Huber loss's linear part and others are not.
        rewards=th.randn(n, 1, generator=generator) * (1 + 20 * (th.rand(n, 1, generator=generator) < 0.3)),
        discounts=None,
    )


def _as_bits(tensor: th.Tensor) -> th.Tensor:
    return tensor.detach().contiguous().view(th.int32)


@pytest.mark.parametrize("activation_fn", [th.nn.ReLU, th.nn.Tanh, th.nn.Sigmoid])
def test_mlp_gradients_are_autograds(activation_fn):
    model = ParallelDQN("MlpPolicy", "CartPole-v1", seed=0,
                        policy_kwargs={"net_arch": [64, 33], "activation_fn": activation_fn})  # fmt: skip
    parameters = list(model.q_net.parameters())
    buffer, views = attach_flat_grads(parameters)
    gradients = mlp_td_gradients(model.q_net, parameters, views)
    assert gradients is not None
    online, target = q_forward(model.q_net), q_forward(model.q_net_target)
    with th.no_grad():  # a target network that differs from the online one
        for param in model.q_net_target.parameters():
            param.mul_(0.9)
    cases = [(weighted, double_q) for weighted in (False, True) for double_q in (False, True)]
    for (weighted, double_q), (seed, batch_size) in zip(cases * 3, [(0, 64), (1, 37), (2, 5)] * 4, strict=True):
        batch = _batch(batch_size, 4, 2, seed)
        weights = th.rand(batch_size, 1, generator=th.Generator().manual_seed(seed)) if weighted else None
        buffer.zero_()
        loss, td_errors = td_loss(online, target, batch, 0.99, double_q, weights)
        loss.backward()
        expected = buffer.clone()
        buffer.fill_(float("nan"))  # everything must be overwritten
        ours, our_td_errors = gradients(batch, td_target(online, target, batch, 0.99, double_q), weights)
        assert th.equal(_as_bits(loss), _as_bits(ours))
        assert th.equal(expected, buffer), (expected != buffer).nonzero().reshape(-1)[:5].tolist()
        if weighted:
            assert td_errors is not None and our_td_errors is not None
            assert th.equal(_as_bits(td_errors), _as_bits(our_td_errors))
        else:
            assert our_td_errors is None


def test_mlp_gradients_only_where_the_hand_written_backward_is_autograds():
    model = ParallelDQN("MlpPolicy", "CartPole-v1", seed=0, policy_kwargs={"net_arch": [8]})
    parameters = list(model.q_net.parameters())
    _, views = attach_flat_grads(parameters)
    assert mlp_td_gradients(model.q_net, parameters, views) is not None
    handle = parameters[0].register_hook(lambda grad: grad * 2)  # a gradient hook must run
    assert mlp_td_gradients(model.q_net, parameters, views) is None
    handle.remove()
    assert mlp_td_gradients(model.q_net, parameters, views) is not None
    assert mlp_td_gradients(model.q_net, parameters[:-1], views[:-1]) is None  # a parameter it does not know of
    model.q_net.q_net.append(th.nn.LeakyReLU())  # an activation without a known derivative
    assert mlp_td_gradients(model.q_net, parameters, views) is None
    unbiased = ParallelDQN("MlpPolicy", "CartPole-v1", seed=0, policy_kwargs={"net_arch": [8]})
    unbiased.q_net.q_net[0] = th.nn.Linear(4, 8, bias=False)
    parameters = list(unbiased.q_net.parameters())
    _, views = attach_flat_grads(parameters)
    assert mlp_td_gradients(unbiased.q_net, parameters, views) is None


def test_parallel_dqn_uses_it_for_an_mlp_and_steps_aside_for_a_hook():
    model = ParallelDQN("MlpPolicy", "CartPole-v1", learning_starts=0, train_freq=4, gradient_steps=1, seed=0,
                        policy_kwargs={"net_arch": [16]})  # fmt: skip
    model.learn(64)
    assert model._learner.mlp_gradients is not None
    calls = []
    model.q_net.q_net[0].weight.register_hook(lambda grad: calls.append(grad.shape))
    model.learn(32, reset_num_timesteps=False)
    assert model._learner.mlp_gradients is None and calls  # autograd's backward, which runs the hook
