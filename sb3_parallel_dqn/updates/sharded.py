"""
Adam with its state sharded across the data-parallel ranks: ZeRO stage 1 (Rajbhandari et al. 2020,
https://arxiv.org/abs/1910.02054), as DeepSpeed's ``stage_1_and_2.py`` and PyTorch's ``ZeroRedundancyOptimizer``
do it, on the flat buffers of :mod:`~sb3_parallel_dqn.updates.flat`.

The parameters and gradients of the network (this rank's shard of it, with model parallelism) stay whole on every
rank, as views of one flat buffer each, padded to a multiple of the D ranks of the data group; each rank owns one
D-th of it, a contiguous block, and keeps Adam's moments for that block only. A gradient step:

1. ``Reduce_scatter`` the flat gradients in place (sum over the data group): each rank receives its block, divided
   by D;
2. one ``Allreduce`` of two numbers over all ranks: the squared norm of every block (for clipping by the norm of the
   whole model) and the loss (for logging);
3. clip and Adam on this rank's block alone (a stock ``torch.optim.Adam`` over the block, as the flat update runs it:
   :class:`~sb3_parallel_dqn.updates.flat.FlatAdam`);
4. ``Allgather`` the updated blocks into the flat parameter buffer of every rank.

Adam is elementwise, so each element goes through the same float operations as with plain data parallelism: with
two data-parallel ranks (a two-term sum is the same in any order) the weights are bit-identical to it as long as the
gradient norm stays under ``max_grad_norm``. When clipping acts, the norm here is put together from the norms of the
pieces of parameters in each block instead of whole tensors (as ``clip_grad_norm_`` does), so the clip coefficient
can differ in its last bits (relative differences around 1e-7); with more ranks, the reduction order of the gradient
sums can differ too.
``tests/test_model_parallel.py`` checks both.

The optimizer object stays SB3's ``Adam`` with an empty state while training; whole moments loaded into it (a
model file) are cut to this rank's block, and :meth:`ShardedAdam.whole_state` gathers them for saving.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch as th
from torch.nn.utils import clip_grads_with_norm_

from sb3_parallel_dqn.distributed import comm
from sb3_parallel_dqn.distributed.comm import Group
from sb3_parallel_dqn.distributed.gradients import SyncClock
from sb3_parallel_dqn.updates.base import Update
from sb3_parallel_dqn.updates.flat import FlatAdam, flat_adam_supported
from sb3_parallel_dqn.updates.flat_buffers import attach_flat_grads, flat_views, reattach_grads

# What the watchdog names when a rank never arrives (sb3_parallel_dqn.distributed.watchdog).
_REDUCE = "the sharded optimizer's gradient Reduce_scatter (train())"
_GATHER = "the sharded optimizer's Allgather (train(), ParallelDQN.save)"


class ShardedAdam(Update):
    """
    The gradient update of ``parameters`` with Adam's state sharded over ``group`` (see the module docstring). It has
    the interface of :class:`~sb3_parallel_dqn.updates.base.Update`, plus :meth:`reduce_`, which replaces
    the gradient ``Allreduce``.

    :param parameters: this rank's parameters, in the optimizer's order
    :param optimizer: SB3's ``Adam`` over them (its hyperparameters are used; its state is kept empty)
    :param group: the data group (None: all ranks, as for every helper of :mod:`~sb3_parallel_dqn.distributed.comm`)
    :param norm_weights: per parameter, the weight of its squared norm in the model's (1 for a tensor that only this
        rank holds, 1/M for one that all M ranks of a model group hold whole); None: all 1
    :param counts_loss: whether this rank's loss counts in the logged mean (one rank per model group)
    :param n_replicas: the number of data-parallel replicas (the loss is their mean)
    """

    def __init__(
        self,
        parameters: Sequence[th.nn.Parameter],
        optimizer: th.optim.Optimizer,
        group: Group | None,
        norm_weights: Sequence[float] | None = None,
        counts_loss: bool = True,
        n_replicas: int = 1,
    ) -> None:
        self.parameters = list(parameters)
        self.optimizer = optimizer
        if not flat_adam_supported(optimizer, self.parameters):
            raise ValueError(
                "shard_optimizer=True shards Adam's state: it needs SB3's default optimizer (torch.optim.Adam without "
                "amsgrad or fused) over float32 parameters on one device"
            )
        self.group = group
        self.size = comm.world_size() if group is None else group.Get_size()
        self.rank = comm.rank() if group is None else group.Get_rank()
        self.counts_loss, self.n_replicas = counts_loss, n_replicas
        n = sum(p.numel() for p in self.parameters)
        self.block = math.ceil(n / self.size)
        padded = self.block * self.size
        device = self.parameters[0].device
        self.grad_buffer, self.grads = attach_flat_grads(self.parameters, extra=padded - n)
        self.param_buffer = th.zeros(padded, dtype=th.float32, device=device)
        self._param_views = flat_views(self.param_buffer, self.parameters)
        own = slice(self.rank * self.block, (self.rank + 1) * self.block)
        self._own = own
        # The reduce-scatter runs in place: this rank's reduced block lands at the start of the gradient buffer (the
        # .grad views mean nothing from then until the next zero_grad). No second gradient buffer.
        self.grad_block = self.grad_buffer[: self.block]
        self.exp_avg = th.zeros(self.block, dtype=th.float32, device=device)
        self.exp_avg_sq = th.zeros(self.block, dtype=th.float32, device=device)
        self.step_count = th.tensor(0.0)
        # Adam over this rank's block of the parameters, its gradient the reduced block.
        self.own_params = self.param_buffer[own]
        self.block_optimizer = FlatAdam(
            optimizer, self.own_params, self.grad_block, self.exp_avg, self.exp_avg_sq, self.step_count
        )
        # The pieces of parameters that fall in this rank's block (as views of grad_block), and the weight of each
        # piece's squared norm in the whole model's: one norm per piece per step, no per-element weights.
        self._pieces, weights = [], []
        start = 0
        for param, weight in zip(self.parameters, norm_weights or [1.0] * len(self.parameters), strict=True):
            low, high = max(start, own.start), min(start + param.numel(), own.stop)
            if low < high:
                self._pieces.append(self.grad_block[low - own.start : high - own.start])
                weights.append(weight)
            start += param.numel()
        self._piece_weights = th.tensor(weights, dtype=th.float64)
        # On a GPU (without CUDA-aware MPI) the collectives run on pinned host copies, made once.
        self._host: th.Tensor | None = None
        if device.type == "cuda":
            self._host = th.empty(padded, dtype=th.float32).pin_memory()
        self.total_norm = th.tensor(0.0)
        self.clock = SyncClock()  # one sync per step: its reduce-scatter and all-reduce, then its all-gather
        self.flat_adam = True
        self.attach()

    def attach(self) -> None:
        """Make gradients and parameters views of the flat buffers again; take this rank's block of loaded moments."""
        reattach_grads(self.parameters, self.grads)
        for param, view in zip(self.parameters, self._param_views, strict=True):
            if param.data_ptr() != view.data_ptr():
                with th.no_grad():
                    view.copy_(param)
                param.data = view
        states = [self.optimizer.state.get(p) for p in self.parameters]
        if not any(states):
            return
        # Whole moments (a loaded model file, or whole_state() for saving): keep this rank's block, drop the rest.
        whole = {key: th.zeros_like(self.param_buffer) for key in ("exp_avg", "exp_avg_sq")}
        for state, param_index in zip(states, range(len(self.parameters)), strict=True):
            if state:
                for key in whole:
                    flat_views(whole[key], self.parameters)[param_index].copy_(state[key])
        steps = {float(state["step"]) for state in states if state}
        self.step_count.fill_(steps.pop() if len(steps) == 1 else 0.0)
        self.exp_avg.copy_(whole["exp_avg"][self._own])
        self.exp_avg_sq.copy_(whole["exp_avg_sq"][self._own])
        self.optimizer.state.clear()

    def zero_grad(self) -> None:
        self.grad_buffer.zero_()

    def sync(self, loss: th.Tensor) -> float:
        """:meth:`reduce_`: the reduce-scatter takes the place of the gradient ``Allreduce``."""
        return self.reduce_(loss)

    def reduce_(self, loss: th.Tensor) -> float:
        """Reduce-scatter the gradients and all-reduce the norm's and the loss's sums; return the mean loss."""
        start = time.perf_counter()
        if self._host is None:
            comm.reduce_scatter_sum_(self.grad_buffer.detach().numpy(), self.group, what=_REDUCE)
        else:
            self._host.copy_(self.grad_buffer)
            block = comm.reduce_scatter_sum_(self._host.numpy(), self.group, what=_REDUCE)
            self.grad_block.copy_(th.from_numpy(block))
        self.grad_block.div_(self.size)
        norms = (
            th.stack([th.linalg.vector_norm(piece, 2.0) for piece in self._pieces]).double()
            if self._pieces
            else th.zeros(0, dtype=th.float64)
        )
        squares = float((norms.cpu().square() * self._piece_weights).sum())
        sums = comm.allreduce_sum_(
            np.array([squares, loss.item() * self.counts_loss]), what="the sharded optimizer's norm Allreduce (train())"
        )
        self.clock.add(time.perf_counter() - start)
        self.total_norm = th.tensor(math.sqrt(sums[0]), dtype=th.float32)
        return float(sums[1]) / self.n_replicas

    def clip_grad_norm_(self, max_norm: float) -> th.Tensor:
        """Clip this rank's block by the norm of the whole model's averaged gradient; returns that norm."""
        clip_grads_with_norm_([self.own_params], max_norm, self.total_norm)  # scales its .grad, the block
        return self.total_norm

    def step(self) -> None:
        """Adam on this rank's block, then every rank's updated block into every rank's parameters."""
        self.block_optimizer.step()
        start = time.perf_counter()
        self._allgather_(self.param_buffer, self.own_params)
        self.clock.add(time.perf_counter() - start, syncs=0)

    def _allgather_(self, buffer: th.Tensor, block: th.Tensor) -> None:
        """Every rank's ``block`` into its place in the flat ``buffer`` (this rank's is already there), in place."""
        if self._host is None:
            comm.allgather_(buffer.detach().numpy(), self.group, what=_GATHER)
            return
        self._host[self._own].copy_(block)
        comm.allgather_(self._host.numpy(), self.group, what=_GATHER)
        buffer.copy_(self._host)

    def end_updates(self) -> None:
        """Nothing to write back: the state lives here until :meth:`whole_state`."""

    def pop_mean_sync_ms(self) -> float | None:
        return self.clock.pop_mean_ms()

    def nbytes(self) -> dict[str, int]:
        """Adam's state held by this rank: the two moments of its block; the gradients: the whole padded buffer."""
        return {"gradients": self.grad_buffer.nbytes, "optimizer": (self.exp_avg.numel() + self.exp_avg_sq.numel()) * 4}

    def whole_state(self) -> None:
        """
        Put the whole moments into the optimizer's state, as ``Adam`` keeps them (for saving). **Collective** over
        the data group (two ``Allgather`` calls); the next :meth:`attach` takes this rank's block back.
        """
        whole = {}
        for key, block in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
            gathered = th.zeros_like(self.param_buffer)
            gathered[self._own] = block
            self._allgather_(gathered, block)
            whole[key] = gathered
        if float(self.step_count) == 0:
            return  # Adam has no state before its first step
        for index, param in enumerate(self.parameters):
            self.optimizer.state[param] = {
                "step": self.step_count.clone(),
                "exp_avg": flat_views(whole["exp_avg"], self.parameters)[index].clone(),
                "exp_avg_sq": flat_views(whole["exp_avg_sq"], self.parameters)[index].clone(),
            }
