"""The lean Q-network forward gives the module's Q-values and gradients bit for bit, or is the module itself."""

import pytest
import torch as th
from stable_baselines3.common.torch_layers import FlattenExtractor

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.engine.q_forward import q_forward


@pytest.mark.parametrize("activation_fn", [th.nn.ReLU, th.nn.Tanh])
def test_lean_forward_matches_the_module(activation_fn):
    model = ParallelDQN("MlpPolicy", "CartPole-v1", seed=0,
                        policy_kwargs={"net_arch": [64, 32], "activation_fn": activation_fn})  # fmt: skip
    forward = q_forward(model.q_net)
    assert forward is not model.q_net
    obs = th.randn(64, 4)
    expected, ours = model.q_net(obs), forward(obs)
    assert th.equal(expected, ours)
    expected.sum().backward()
    expected_grads = [p.grad.clone() for p in model.q_net.parameters()]
    model.q_net.zero_grad()
    ours.sum().backward()
    for expected_grad, param in zip(expected_grads, model.q_net.parameters(), strict=True):
        assert th.equal(expected_grad, param.grad)


def test_lean_forward_falls_back_to_the_module():
    model = ParallelDQN("MlpPolicy", "CartPole-v1", seed=0, policy_kwargs={"net_arch": [8]})
    handle = model.q_net.q_net[0].register_forward_hook(lambda module, args, output: output * 2)
    assert q_forward(model.q_net) is model.q_net  # a hook must run
    handle.remove()
    assert q_forward(model.q_net) is not model.q_net
    global_handle = th.nn.modules.module.register_module_forward_hook(lambda module, args, output: None)
    try:
        assert q_forward(model.q_net) is model.q_net
    finally:
        global_handle.remove()
    model.q_net.q_net.append(th.nn.LayerNorm(2))  # a layer the lean path does not know
    assert q_forward(model.q_net) is model.q_net


class _Extractor(FlattenExtractor):
    """A user's features extractor: its forward may do anything."""


def test_lean_forward_is_only_for_the_flatten_extractor():
    model = ParallelDQN("MlpPolicy", "CartPole-v1", seed=0, policy_kwargs={"features_extractor_class": _Extractor})
    assert q_forward(model.q_net) is model.q_net
