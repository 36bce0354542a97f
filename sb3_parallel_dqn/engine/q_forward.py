"""
Q-values of SB3's MLP ``QNetwork`` without ``nn.Module`` call dispatch.

``QNetwork.forward`` goes through four module calls before the first layer, then one per layer; each costs a few
microseconds of Python (hook checks, ``__call__`` plumbing), which adds up to a sizeable share of a gradient step on
a small network and of an env step in collection. :func:`q_forward` makes the same tensor calls in the same order
(``preprocess_obs``, ``flatten``, ``F.linear`` and the activation per layer), so the Q-values are bit-identical,
and falls back to the module itself for anything else: another features extractor or layer type, or hooks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch as th
from gymnasium import spaces
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.torch_layers import FlattenExtractor
from stable_baselines3.dqn.policies import QNetwork
from torch import nn
from torch.nn import functional as F

from sb3_parallel_dqn import compat

QForward = Callable[[th.Tensor], th.Tensor]

# Activation modules whose forward is exactly this function of the input.
ACTIVATIONS: dict[type[nn.Module], QForward] = {nn.ReLU: F.relu, nn.Tanh: th.tanh, nn.Sigmoid: th.sigmoid}


@dataclasses.dataclass(frozen=True)
class LeanMlp:
    """
    What the lean paths need of an MLP ``QNetwork``: its preprocessing and, in order, one ``(linear, None)`` or
    ``(None, activation)`` per layer of ``q_net.q_net``.
    """

    observation_space: spaces.Space
    normalize_images: bool
    start_dim: int
    end_dim: int
    steps: tuple[tuple[nn.Linear | None, QForward | None], ...]

    def features(self, obs: th.Tensor) -> th.Tensor:
        """``q_net.extract_features(obs)``: SB3's ``preprocess_obs`` and the flatten."""
        x = preprocess_obs(obs, self.observation_space, normalize_images=self.normalize_images)
        assert isinstance(x, th.Tensor)
        return x.flatten(self.start_dim, self.end_dim)


def lean_mlp(q_net: nn.Module) -> LeanMlp | None:
    """The layers of SB3's MLP ``QNetwork`` without hooks, or None for anything else."""
    if type(q_net) is not QNetwork or type(q_net.features_extractor) is not FlattenExtractor:
        return None
    layers = q_net.q_net
    modules = [q_net, q_net.features_extractor, *q_net.features_extractor.children(), layers, *layers]
    if type(layers) is not nn.Sequential or compat.has_hooks(modules):
        return None
    flatten = q_net.features_extractor.flatten
    if type(flatten) is not nn.Flatten:
        return None
    steps: list[tuple[nn.Linear | None, QForward | None]] = []
    for layer in layers:
        if type(layer) is nn.Linear:
            steps.append((layer, None))
        elif type(layer) in ACTIVATIONS and not getattr(layer, "inplace", False):
            steps.append((None, ACTIVATIONS[type(layer)]))
        else:
            return None
    return LeanMlp(q_net.observation_space, q_net.normalize_images, flatten.start_dim, flatten.end_dim, tuple(steps))


def q_forward(q_net: nn.Module) -> QForward:
    """A function computing ``q_net(obs)``: the lean path for an MLP ``QNetwork``, else ``q_net`` itself."""
    mlp = lean_mlp(q_net)
    if mlp is None:
        return q_net

    def forward(obs: th.Tensor) -> th.Tensor:
        x = mlp.features(obs)
        for linear, activation in mlp.steps:
            x = F.linear(x, linear.weight, linear.bias) if linear is not None else activation(x)  # type: ignore[misc]
        return x

    return forward
