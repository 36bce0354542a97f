"""
:class:`Update`: the one interface of a gradient update, whatever it runs on -- SB3's eager path, flat buffers,
data-parallel averaging, the sharded optimizer, a tensor-parallel split. The learner calls, per ``train()``:
:meth:`~Update.attach` once, then per gradient step :meth:`~Update.zero_grad`, the backward pass,
:meth:`~Update.sync`, :meth:`~Update.clip_grad_norm_` and :meth:`~Update.step`, and :meth:`~Update.end_updates`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch as th


class Update(ABC):
    """
    A gradient update of ``parameters`` (all of one network, or this rank's shard of it) by ``optimizer`` (SB3's,
    whose ``state_dict`` stays the one saved and loaded). ``grad_buffer`` holds the gradients, flat, where the
    implementation has one.
    """

    parameters: list[th.nn.Parameter]
    optimizer: th.optim.Optimizer
    grad_buffer: th.Tensor

    @abstractmethod
    def attach(self) -> None:
        """Before a series of updates: take up what ``load``/``set_parameters`` replaced since the last one (cheap
        when nothing changed)."""

    @abstractmethod
    def zero_grad(self) -> None:
        """Zero the gradients, before the backward pass."""

    @abstractmethod
    def sync(self, loss: th.Tensor) -> float:
        """After the backward pass: make the gradients the job's (averaged over the data-parallel ranks, where
        there are several) and return the loss, averaged the same way. Collective in a job of several."""

    @abstractmethod
    def clip_grad_norm_(self, max_norm: float) -> th.Tensor:
        """Clip the gradients by the norm of the whole model's, as ``th.nn.utils.clip_grad_norm_``; return it."""

    @abstractmethod
    def step(self) -> None:
        """The optimizer step."""

    def end_updates(self) -> None:
        """After a series of updates (also when one raised): leave the optimizer's state as ``optimizer.step()``
        would have (nothing to do by default)."""
        return

    @abstractmethod
    def nbytes(self) -> dict[str, int]:
        """Bytes this rank holds for the update: ``gradients`` and ``optimizer`` (its state)."""

    def whole_state(self) -> None:
        """Put the whole optimizer state into ``optimizer.state``, as one process holds it, for saving (collective
        where the state is sharded; nothing to do by default)."""
        return

    def pop_mean_sync_ms(self) -> float | None:
        """Mean milliseconds of one :meth:`sync` since the last call; None where there is no communication."""
        return None
