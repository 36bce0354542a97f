"""
Data-parallel averaging: the gradients of every rank's batch averaged with ONE ``Allreduce`` on ONE contiguous
float32 buffer per gradient step (CleanRL's ``ppo_atari_multigpu.py`` flattens the same way), before clipping, so
that every rank clips and steps alike and the weights stay bit-identical across ranks.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import torch as th

from sb3_parallel_dqn.distributed import comm
from sb3_parallel_dqn.distributed.gradients import SyncClock, cuda_aware_mpi
from sb3_parallel_dqn.updates.base import Update
from sb3_parallel_dqn.updates.flat import FlatUpdate
from sb3_parallel_dqn.updates.flat_buffers import attach_flat_grads, reattach_grads


class GradientAverager:
    """
    Averages gradients over all ranks (or over ``group``) with ONE ``Allreduce`` on ONE contiguous float32 buffer.

    Every parameter's ``.grad`` is a view into that buffer (as DDP's ``gradient_as_bucket_view``), so autograd
    accumulates straight into it and the reduction needs no packing copy. The buffer has one extra slot that
    carries the loss, so the logged loss is the mean over ranks at no extra message.

    On CUDA without CUDA-aware MPI the buffer is staged through pinned host memory.

    :param parameters: the parameters that receive gradients (the online Q-network's, or this rank's shard of it)
    :param group: the ranks to average over (default: all; with model parallelism, the data group)
    """

    def __init__(self, parameters: Iterable[th.nn.Parameter], group: comm.Group | None = None) -> None:
        self.parameters = [p for p in parameters if p.requires_grad]
        dtypes = {p.dtype for p in self.parameters}
        if dtypes != {th.float32}:
            raise TypeError(f"Gradient averaging supports float32 parameters only, got {sorted(map(str, dtypes))}")
        self.group = group
        self.world_size = comm.world_size() if group is None else group.Get_size()
        device = self.parameters[0].device
        self.buffer, self._views = attach_flat_grads(self.parameters, extra=1)
        self._loss_slot = self.buffer[-1:]
        # What MPI reduces: the buffer itself on CPU or with CUDA-aware MPI, else a pinned host copy of it.
        self._host: th.Tensor | None = None
        self._mpi_array: Any
        if device.type == "cpu":
            self._mpi_array = self.buffer.numpy()
        elif cuda_aware_mpi():
            self._mpi_array = self.buffer  # mpi4py reads device memory through __cuda_array_interface__/DLPack
        else:
            self._host = th.empty_like(self.buffer, device="cpu").pin_memory()
            self._mpi_array = self._host.numpy()
        self.clock = SyncClock()

    @property
    def n_floats(self) -> int:
        """Size of the reduced buffer (parameters + the loss slot)."""
        return self.buffer.numel()

    def zero_grad(self) -> None:
        """Zero all gradients with one kernel (they are views of the buffer; ``average_`` re-attaches strays)."""
        self.buffer.zero_()

    def average_(self, loss: th.Tensor, reattach: bool = True) -> float:
        """
        Replace every gradient by its mean over ranks, in place; return the loss averaged over ranks.

        Call it after ``loss.backward()`` and before clipping, so every rank clips and steps identically.
        ``reattach=False`` skips checking that every ``.grad`` is still its view of the buffer, for a caller that
        checked already (``ParallelDQN.train`` does once per call, not per step).
        """
        if reattach:
            # Someone (e.g. ``optimizer.zero_grad(set_to_none=True)``) may have replaced a gradient tensor: copy it in.
            reattach_grads(self.parameters, self._views)
        self._loss_slot.copy_(loss.detach().reshape(1))
        start = time.perf_counter()
        if self._host is not None:
            self._host.copy_(self.buffer)
        elif self.buffer.is_cuda:
            th.cuda.current_stream(self.buffer.device).synchronize()
        comm.allreduce_sum_(self._mpi_array, self.group, what="the gradient Allreduce of train()")
        if self._host is not None:
            self.buffer.copy_(self._host, non_blocking=True)
        self.clock.add(time.perf_counter() - start)
        self.buffer.div_(self.world_size)
        if self._host is not None:
            return float(self._mpi_array[-1]) / self.world_size  # the host copy still holds the sum
        if self.buffer.is_cpu:
            return float(self._mpi_array[-1])  # shares memory with the buffer, now averaged
        return self._loss_slot.item()

    def pop_mean_sync_ms(self) -> float | None:
        """Mean wall-clock milliseconds per ``Allreduce`` since the last call (``None`` if none happened)."""
        return self.clock.pop_mean_ms()


class AveragedUpdate(Update):
    """
    The flat-buffer update of :class:`~sb3_parallel_dqn.updates.flat.FlatUpdate` with the gradients averaged over
    ``group`` by a :class:`GradientAverager` (whose buffer, with the loss in its extra slot, is the update's
    gradient buffer): plain data parallelism.

    :param parameters: the parameters to update, in the optimizer's order
    :param optimizer: the optimizer that owns them
    :param group: the ranks to average over (the data group; None: all)
    :param total_norm: see :class:`~sb3_parallel_dqn.updates.flat.FlatUpdate`
    """

    def __init__(
        self,
        parameters: Iterable[th.nn.Parameter],
        optimizer: th.optim.Optimizer,
        group: comm.Group | None,
        total_norm: Any = None,
    ) -> None:
        self.averager = GradientAverager(parameters, group)
        self.inner = FlatUpdate(self.averager.parameters, optimizer, self.averager.buffer, total_norm)
        self.parameters, self.optimizer, self.grad_buffer = self.inner.parameters, optimizer, self.averager.buffer

    def attach(self) -> None:
        self.inner.attach()

    def zero_grad(self) -> None:
        self.inner.zero_grad()

    def sync(self, loss: th.Tensor) -> float:
        # The loss travels in the same Allreduce. The gradient views were checked once for this train() call
        # (attach), and nothing in it replaces them: no check per step.
        return self.averager.average_(loss, reattach=False)

    def clip_grad_norm_(self, max_norm: float) -> th.Tensor:
        return self.inner.clip_grad_norm_(max_norm)

    def step(self) -> None:
        self.inner.step()

    def end_updates(self) -> None:
        self.inner.end_updates()

    def nbytes(self) -> dict[str, int]:
        return self.inner.nbytes()

    def pop_mean_sync_ms(self) -> float | None:
        return self.averager.pop_mean_sync_ms()
