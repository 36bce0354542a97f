"""
The TD loss's gradients for SB3's MLP ``QNetwork``, backpropagated by hand instead of by autograd.

On a small network autograd's bookkeeping costs more than its arithmetic: recording the graph in the forward, then
the engine walking a dozen nodes and accumulating every parameter's gradient. That was about a third of a CartPole
gradient step (``docs/BENCHMARKS.md``, "Scale-out"). An MLP's backward is short and fixed, so
:class:`MlpTDGradients` runs the forward without a graph, keeps the layer outputs, and calls the kernels of
autograd's derivative formulas (:data:`sb3_parallel_dqn.compat.SMOOTH_L1_LOSS_BACKWARD` lists them) in autograd's
order, and copies each parameter's gradient into its view of the flat gradient buffer (no zeroing needed). The
gradients, the loss and the TD errors are ``loss.backward()``'s bit for bit (``tests/test_mlp_gradients.py``); a
gradient that autograd would accumulate onto the zeroed buffer as ``+0.0`` may be copied in as ``-0.0``, which no
later step tells apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch as th
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from torch import nn
from torch.nn import functional as F

from sb3_parallel_dqn import compat
from sb3_parallel_dqn.engine.q_forward import LeanMlp, lean_mlp

_Backward = Callable[[th.Tensor, th.Tensor], th.Tensor]


class MlpTDGradients:
    """
    The TD loss of :func:`sb3_parallel_dqn.losses.td_loss` and its gradients, for an MLP Q-network; build it with
    :func:`mlp_td_gradients`.

    :param mlp: the network's layers
    :param backward: per layer of ``mlp``, the gradient views ``(weight, bias)`` of a linear layer, or the derivative
        ``(grad, output) -> grad_input`` of an activation
    """

    def __init__(self, mlp: LeanMlp, backward: Sequence[tuple[th.Tensor, th.Tensor] | _Backward]) -> None:
        self.mlp = mlp
        self.backward = list(backward)
        first = self.backward[0]
        device = first[0].device if isinstance(first, tuple) else None
        self._one = th.ones((), device=device)  # autograd's seed, d loss / d loss: made once, not at every step

    def __call__(
        self, replay_data: ReplayBufferSamples, target_q_values: th.Tensor, weights: th.Tensor | None = None
    ) -> tuple[th.Tensor, th.Tensor | None]:
        """
        Write the gradients of the TD loss of ``replay_data`` (against ``target_q_values``, weighted by ``weights``
        when given) into the gradient views, replacing what was there; return the loss, and with ``weights`` the TD
        errors.
        """
        with th.no_grad():
            x = self.mlp.features(replay_data.observations)
            outputs = [x]  # the input of each layer, then the Q-values
            for linear, activation in self.mlp.steps:
                x = F.linear(x, linear.weight, linear.bias) if linear is not None else activation(x)  # type: ignore[misc]
                outputs.append(x)
            actions = replay_data.actions.long()
            current_q_values = th.gather(x, dim=1, index=actions)
            one = self._one
            if weights is None:
                loss = F.smooth_l1_loss(current_q_values, target_q_values)
                grad = compat.smooth_l1_loss_backward(one, current_q_values, target_q_values, mean=True)
                td_errors = None
            else:
                elementwise = F.smooth_l1_loss(current_q_values, target_q_values, reduction="none")
                loss = (weights * elementwise).mean()
                # mean()'s derivative, then the product's with respect to its second factor
                grad = one.expand(elementwise.shape) / elementwise.numel() * weights
                grad = compat.smooth_l1_loss_backward(grad, current_q_values, target_q_values, mean=False)
                td_errors = (current_q_values - target_q_values).reshape(-1)
            grad = th.zeros_like(x).scatter_add_(1, actions, grad)  # gather's derivative
            for index in range(len(self.backward) - 1, -1, -1):
                step = self.backward[index]
                if not isinstance(step, tuple):
                    grad = step(grad, outputs[index + 1])  # the activation's derivative, from its output
                    continue
                weight_grad, bias_grad = step
                # addmm(bias, x, weight.t())'s derivatives, as autograd's AddmmBackward0 (then the transpose's). Into
                # new tensors, then copied, as autograd accumulates them: BLAS may round differently when it writes
                # to the buffer's unaligned views.
                weight_grad.copy_(grad.t().mm(outputs[index]))
                bias_grad.copy_(grad.sum(0))
                if index > 0:  # the network's input needs no gradient
                    linear = self.mlp.steps[index][0]
                    assert linear is not None
                    grad = grad.mm(linear.weight)
        return loss, td_errors


def mlp_td_gradients(q_net: nn.Module, parameters: Sequence[th.Tensor], grads: Sequence[th.Tensor]) -> MlpTDGradients | None:
    """
    :class:`MlpTDGradients` for ``q_net`` when it is SB3's MLP ``QNetwork`` whose trainable parameters are exactly
    ``parameters`` (each a biased linear layer's weight or bias, without gradient hooks), with ``grads`` their
    gradient views of one buffer; None otherwise (autograd then backpropagates).
    """
    mlp = lean_mlp(q_net)
    if mlp is None or compat.has_tensor_hooks(parameters):
        return None
    grad_of = {id(param): grad for param, grad in zip(parameters, grads, strict=True)}
    backward: list[tuple[th.Tensor, th.Tensor] | _Backward] = []
    for linear, activation in mlp.steps:
        if linear is None:
            assert activation is not None
            derivative = compat.activation_backward(activation)
            if derivative is None:
                return None
            backward.append(derivative)
            continue
        weight, bias = linear.weight, linear.bias
        if bias is None or id(weight) not in grad_of or id(bias) not in grad_of or weight.dtype != th.float32:
            return None
        weight_grad, bias_grad = grad_of[id(weight)], grad_of[id(bias)]
        if not (weight_grad.is_contiguous() and bias_grad.is_contiguous()):
            return None
        backward.append((weight_grad, bias_grad))
    linears = sum(isinstance(step, tuple) for step in backward)
    if 2 * linears != len(grad_of) or not backward or not isinstance(backward[0], tuple):
        return None  # a trainable parameter outside the linear layers, or a network that starts with an activation
    return MlpTDGradients(mlp, backward)
