"""
DQN's TD loss, as SB3's ``DQN.train()`` computes it, with two options: Double DQN targets (van Hasselt et al. 2016,
https://arxiv.org/abs/1509.06461) and importance weights from prioritized replay (Schaul et al. 2016,
https://arxiv.org/abs/1511.05952). With neither, the float operations are SB3's, in SB3's order.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch as th
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from torch.nn import functional as F

# A Q-network's forward: observations to Q-values (the online or the target network).
QForward = Callable[[th.Tensor], th.Tensor]


class NonFiniteError(FloatingPointError):
    """The loss or the (averaged) gradients of a gradient update are NaN or infinite."""


def td_target(
    online_q: QForward,
    target_q: QForward,
    replay_data: ReplayBufferSamples,
    gamma: float,
    double_q: bool = False,
) -> th.Tensor:
    """The 1-step (or n-step) TD target of :func:`td_loss`, a column without gradients (same parameters)."""
    # For n-step replay, discount factor is gamma**n_steps (when no early termination)
    discounts = replay_data.discounts if replay_data.discounts is not None else gamma

    with th.no_grad():
        # Compute the next Q-values using the target network
        next_q_values = target_q(replay_data.next_observations)
        if double_q:
            next_actions = online_q(replay_data.next_observations).argmax(dim=1, keepdim=True)
            next_q_values = th.gather(next_q_values, dim=1, index=next_actions)
        else:
            # Follow greedy policy: use the one with the highest value
            next_q_values, _ = next_q_values.max(dim=1)
            # Avoid potential broadcast issue
            next_q_values = next_q_values.reshape(-1, 1)
        # 1-step TD target
        target_q_values = replay_data.rewards + (1 - replay_data.dones) * discounts * next_q_values
    return target_q_values


def td_loss(
    online_q: QForward,
    target_q: QForward,
    replay_data: ReplayBufferSamples,
    gamma: float,
    double_q: bool = False,
    weights: th.Tensor | None = None,
) -> tuple[th.Tensor, th.Tensor | None]:
    """
    The Huber loss between Q(s, a) of the online network and the 1-step (or n-step) TD target of the target network.

    :param online_q: the online Q-network's forward (with gradients)
    :param target_q: the target Q-network's forward
    :param replay_data: the batch
    :param gamma: the discount factor (n-step batches carry their own discounts)
    :param double_q: the online network picks the next action and the target network scores it, instead of the
        target network's max, which removes the max operator's overestimation
    :param weights: importance weights of prioritized replay, a column, or None for SB3's unweighted mean
    :return: the loss, and with ``weights`` the TD errors of the batch (for the new priorities)
    """
    target_q_values = td_target(online_q, target_q, replay_data, gamma, double_q)

    # Get current Q-values estimates
    current_q_values = online_q(replay_data.observations)

    # Retrieve the q-values for the actions from the replay buffer
    current_q_values = th.gather(current_q_values, dim=1, index=replay_data.actions.long())

    if weights is None:
        # Compute Huber loss (less sensitive to outliers)
        return F.smooth_l1_loss(current_q_values, target_q_values), None
    loss = (weights * F.smooth_l1_loss(current_q_values, target_q_values, reduction="none")).mean()
    return loss, (current_q_values - target_q_values).detach().reshape(-1)


def check_finite(loss: float, grad_norm: th.Tensor, n_update: int, global_step: int) -> None:
    """
    Raise :class:`NonFiniteError` before the optimizer step when the loss or the gradient norm is NaN or infinite: it
    would spread to every weight (and, under MPI, to every rank through the average). The averaged gradients are the
    same on every rank, so all ranks raise together. One scalar check per update (a device sync on GPU).
    """
    if not (math.isfinite(loss) and th.isfinite(grad_norm)):
        raise NonFiniteError(
            f"non-finite loss or gradients at gradient update {n_update} (global step {global_step}): loss {loss}, "
            f"gradient norm {float(grad_norm)}; the weights were not updated"
        )
