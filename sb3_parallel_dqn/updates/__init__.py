"""
The gradient updates, behind one interface (:class:`Update`: zero, sync, clip, step, bytes held, whole state for
saving), and :func:`make_update`, which picks the one a model's settings ask for:

- :class:`EagerUpdate` (``eager``): SB3's own, tensor by tensor, for one process with an optimizer the flat path
  cannot replace bit for bit;
- :class:`FlatUpdate` (``flat``): gradients, parameters and Adam's moments on flat buffers, a stock ``Adam`` over
  them; one process with SB3's default ``Adam`` (bit-identical to SB3);
- :class:`AveragedUpdate` (``averaged``): the flat update with the gradients averaged over the data-parallel
  ranks, one ``Allreduce`` per step;
- :class:`ShardedAdam` (``sharded``): ZeRO-1, Adam's state sharded over the data-parallel ranks;
- :class:`ModelGroupNorm` (``split``): with a tensor-parallel split, the clip norm over the model group.

This layer sits between the MPI helpers (:mod:`sb3_parallel_dqn.distributed`, which it uses) and the algorithm
(:mod:`sb3_parallel_dqn.engine`, which uses it); it knows neither models nor replay buffers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch as th

from sb3_parallel_dqn.distributed.mesh import Mesh
from sb3_parallel_dqn.updates.averaged import AveragedUpdate, GradientAverager
from sb3_parallel_dqn.updates.base import Update
from sb3_parallel_dqn.updates.eager import EagerUpdate
from sb3_parallel_dqn.updates.flat import FlatAdam, FlatUpdate, flat_adam_supported
from sb3_parallel_dqn.updates.sharded import ShardedAdam
from sb3_parallel_dqn.updates.split import ModelGroupNorm


def make_update(
    parameters: Sequence[th.nn.Parameter],
    optimizer: th.optim.Optimizer,
    grid: Mesh,
    shard_optimizer: bool = False,
    norm_weights: Sequence[float] | None = None,
) -> Update:
    """
    The update of ``parameters`` by ``optimizer`` on the mesh ``grid`` (see the module docstring).

    :param parameters: the parameters that require grad, in the optimizer's order (this rank's shards when split)
    :param optimizer: SB3's optimizer over them
    :param grid: the model's mesh
    :param shard_optimizer: ZeRO-1 over the data group
    :param norm_weights: with a split model, per parameter, the weight of its squared norm (see :class:`ModelGroupNorm`)
    """
    if shard_optimizer:
        return ShardedAdam(parameters, optimizer, grid.data_group, norm_weights, grid.model_rank == 0, grid.data_parallel_size)
    total_norm = None
    if grid.model_parallel_size > 1:
        assert grid.model_group is not None and norm_weights is not None
        total_norm = ModelGroupNorm(norm_weights, grid.model_group, parameters[0].device)
    if grid.data_parallel_size > 1:
        return AveragedUpdate(parameters, optimizer, grid.data_group, total_norm)
    if total_norm is None and not flat_adam_supported(optimizer, parameters):
        return EagerUpdate(parameters, optimizer)
    return FlatUpdate(parameters, optimizer, total_norm=total_norm)


__all__ = [
    "AveragedUpdate",
    "EagerUpdate",
    "FlatAdam",
    "FlatUpdate",
    "GradientAverager",
    "ModelGroupNorm",
    "ShardedAdam",
    "Update",
    "flat_adam_supported",
    "make_update",
]
