"""
The update's part of a tensor-parallel split (Megatron-LM's ``clip_grad_norm_fp32`` over the model group): the clip
norm of the whole model from this rank's per-tensor gradient norms, one ``Allreduce`` of one number over the model
group. Tensors that every rank of the group holds whole (biases of row-parallel layers, the head) count once: their
squared norms weigh 1/M on each of the M ranks. The forward and backward collectives of the split layers are the
layers' own (:mod:`sb3_parallel_dqn.distributed.tensor_parallel`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch as th

from sb3_parallel_dqn.distributed.comm import Group
from sb3_parallel_dqn.distributed.tensor_parallel import allreduce_tensor


class ModelGroupNorm:
    """
    ``total_norm(norms)`` of a split model (a :class:`~sb3_parallel_dqn.updates.flat.FlatUpdate`'s ``total_norm``).

    :param weights: per parameter of this rank, the weight of its squared norm: 1 for a shard, 1/M for a whole tensor
    :param group: the model group
    :param device: where the norms are
    """

    def __init__(self, weights: Sequence[float], group: Group, device: th.device) -> None:
        self.weights = th.tensor(list(weights), dtype=th.float32, device=device)
        self.group = group

    def __call__(self, norms: th.Tensor) -> th.Tensor:
        return allreduce_tensor((norms.square() * self.weights).sum(), self.group).sqrt()
