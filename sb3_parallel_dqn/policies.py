"""
SB3's DQN policies, plus an optional dueling head (``policy_kwargs=dict(dueling=True)``).

Dueling network architecture: Wang et al. (2016), https://arxiv.org/abs/1511.06581. With ``dueling=False`` these
policies build exactly SB3's ``QNetwork``. ``ParallelDQN`` only uses them when ``dueling=True`` is asked for (see
:func:`dueling_policy_class`): otherwise it keeps SB3's own policy classes, so that its model files load with
stable-baselines3 alone.
"""

from __future__ import annotations

from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, create_mlp
from stable_baselines3.common.type_aliases import PyTorchObs
from stable_baselines3.dqn import policies as sb3_policies
from stable_baselines3.dqn.policies import QNetwork
from torch import nn


class DuelingQNetwork(QNetwork):
    """
    Q-network with a dueling head: ``Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a')``.

    The features extractor and the hidden layers of ``net_arch`` are shared; the value and the advantage streams
    are one linear layer each on top of them. Subtracting the mean advantage (the paper's eq. 9) makes V and A
    identifiable without changing the greedy action.

    :param observation_space: Observation space
    :param action_space: Action space
    :param features_extractor: Network to extract features
    :param features_dim: Number of features
    :param net_arch: The specification of the shared hidden layers.
    :param activation_fn: Activation function
    :param normalize_images: Whether to normalize images or not,
         dividing by 255.0 (True by default)
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        net_arch: list[int] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
    ) -> None:
        super().__init__(
            observation_space, action_space, features_extractor, features_dim, net_arch, activation_fn, normalize_images
        )
        # QNetwork built one MLP ending in the Q-values: replace it by the shared layers and two heads.
        del self.q_net
        self.trunk = nn.Sequential(*create_mlp(self.features_dim, 0, self.net_arch, self.activation_fn))
        hidden_dim = self.net_arch[-1] if self.net_arch else self.features_dim
        self.value_head = nn.Linear(hidden_dim, 1)
        self.advantage_head = nn.Linear(hidden_dim, int(self.action_space.n))

    def forward(self, obs: PyTorchObs) -> th.Tensor:
        hidden = self.trunk(self.extract_features(obs, self.features_extractor))
        advantages = self.advantage_head(hidden)
        return self.value_head(hidden) + advantages - advantages.mean(dim=1, keepdim=True)


class MinAtarCNN(BaseFeaturesExtractor):
    """
    The MinAtar paper's network body for 10x10 observations: one 3x3 convolution with 16 channels (stride 1, no
    padding) and a 128-unit layer, both with ReLU (Young & Tian 2019, https://arxiv.org/abs/1903.03176).

    Use it with ``MlpPolicy`` and ``net_arch=[]``, so that the Q-values are one linear layer on its 128 features, as
    in the paper: ``policy_kwargs=dict(features_extractor_class=MinAtarCNN, net_arch=[])`` (``dueling=True`` puts the
    value and advantage heads on the same features). SB3's ``NatureCNN`` cannot take these inputs: its 8x8 stride-4
    first layer needs at least 36x36 pixels, and SB3 only treats ``uint8`` boxes as images.

    :param observation_space: a ``Box`` of shape ``(H, W, C)`` (MinAtar's boolean channels) or ``(C, H, W)``
    :param features_dim: units of the fully connected layer
    :param channels_last: whether the channel axis is the last one (MinAtar's layout); SB3 leaves non-``uint8``
        observations untransposed
    """

    def __init__(self, observation_space: spaces.Box, features_dim: int = 128, channels_last: bool = True) -> None:
        super().__init__(observation_space, features_dim)
        assert observation_space.shape is not None and len(observation_space.shape) == 3, (
            f"MinAtarCNN needs (H, W, C) or (C, H, W) observations, not {observation_space.shape}"
        )
        self.channels_last = channels_last
        if channels_last:
            height, width, channels = observation_space.shape
        else:
            channels, height, width = observation_space.shape
        self.conv = nn.Sequential(nn.Conv2d(channels, 16, kernel_size=3, stride=1), nn.ReLU(), nn.Flatten())
        self.linear = nn.Sequential(nn.Linear(16 * (height - 2) * (width - 2), features_dim), nn.ReLU())

    def forward(self, observations: th.Tensor) -> th.Tensor:
        if self.channels_last:
            observations = observations.permute(0, 3, 1, 2)
        return self.linear(self.conv(observations))


class DQNPolicy(sb3_policies.DQNPolicy):
    """
    SB3's ``DQNPolicy`` with an optional dueling head; every other argument is SB3's.

    :param dueling: Build a :class:`DuelingQNetwork` (online and target) instead of SB3's ``QNetwork``
    """

    def __init__(self, *args: Any, dueling: bool = False, **kwargs: Any) -> None:
        # Read by make_q_net(), which the base class' __init__ calls: set it first.
        self.dueling = dueling
        super().__init__(*args, **kwargs)

    def make_q_net(self) -> QNetwork:
        if not self.dueling:
            return super().make_q_net()
        # Make sure we always have separate networks for features extractors etc (as SB3's make_q_net)
        net_args = self._update_features_extractor(self.net_args, features_extractor=None)
        return DuelingQNetwork(**net_args).to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "dueling": self.dueling}


MlpPolicy = DQNPolicy


class CnnPolicy(DQNPolicy, sb3_policies.CnnPolicy):
    """SB3's DQN ``CnnPolicy`` (``NatureCNN`` features) with the ``dueling`` option of :class:`DQNPolicy`."""


class MultiInputPolicy(DQNPolicy, sb3_policies.MultiInputPolicy):
    """SB3's DQN ``MultiInputPolicy`` (``CombinedExtractor`` features) with the ``dueling`` option of :class:`DQNPolicy`."""


_DUELING_CLASSES: dict[type[sb3_policies.DQNPolicy], type[DQNPolicy]] = {
    sb3_policies.DQNPolicy: DQNPolicy,  # SB3's MlpPolicy is the same class
    sb3_policies.CnnPolicy: CnnPolicy,
    sb3_policies.MultiInputPolicy: MultiInputPolicy,
}


def dueling_policy_class(policy_class: type[sb3_policies.DQNPolicy]) -> type[DQNPolicy]:
    """The policy class with the ``dueling`` option that stands for SB3's ``policy_class``."""
    if issubclass(policy_class, DQNPolicy):
        return policy_class
    if policy_class not in _DUELING_CLASSES:
        raise ValueError(
            f"dueling=True needs one of SB3's DQN policies (MlpPolicy, CnnPolicy, MultiInputPolicy) or a subclass of "
            f"sb3_parallel_dqn.policies.DQNPolicy, not {policy_class.__qualname__}"
        )
    return _DUELING_CLASSES[policy_class]


def resolve_dueling(
    policy_class: type[sb3_policies.DQNPolicy], policy_kwargs: dict[str, Any]
) -> tuple[type[sb3_policies.DQNPolicy], dict[str, Any]]:
    """
    The policy class and keyword arguments that build what ``policy_kwargs["dueling"]`` asks for. SB3's policies take
    no ``dueling`` argument: ``dueling=True`` swaps in this module's class, ``dueling=False`` keeps SB3's own (whose
    model files load without this package) and drops the key, in a new dict (the user's own must not change).
    """
    if "dueling" not in policy_kwargs:
        return policy_class, policy_kwargs
    if policy_kwargs["dueling"]:
        return dueling_policy_class(policy_class), policy_kwargs
    if issubclass(policy_class, DQNPolicy):
        return policy_class, policy_kwargs
    return policy_class, {key: value for key, value in policy_kwargs.items() if key != "dueling"}
