"""
:class:`EagerUpdate`: SB3's own update, tensor by tensor (``optimizer.zero_grad()``, ``clip_grad_norm_``,
``optimizer.step()``), for one process with an optimizer the flat path cannot replace bit for bit (another class,
fused Adam, several parameter groups).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch as th

from sb3_parallel_dqn.updates.base import Update


def _state_nbytes(optimizer: th.optim.Optimizer) -> int:
    return sum(t.nbytes for state in optimizer.state.values() for t in state.values() if th.is_tensor(t))


class EagerUpdate(Update):
    """
    SB3's ``DQN.train()`` update, as it is (see the module docstring).

    :param parameters: the parameters to update
    :param optimizer: the optimizer that owns them
    """

    def __init__(self, parameters: Sequence[th.nn.Parameter], optimizer: th.optim.Optimizer) -> None:
        self.parameters, self.optimizer = list(parameters), optimizer
        self.grad_buffer = th.empty(0, device=self.parameters[0].device)  # no flat buffer: each tensor its own

    def attach(self) -> None:
        """Nothing to take up: SB3's path works on whatever tensors the network and optimizer hold."""

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def sync(self, loss: th.Tensor) -> float:
        return loss.item()

    def clip_grad_norm_(self, max_norm: float) -> th.Tensor:
        return th.nn.utils.clip_grad_norm_(self.parameters, max_norm)

    def step(self) -> None:
        self.optimizer.step()

    def nbytes(self) -> dict[str, int]:
        gradients = sum(p.grad.nbytes for p in self.parameters if p.grad is not None)
        return {"gradients": gradients, "optimizer": _state_nbytes(self.optimizer)}
