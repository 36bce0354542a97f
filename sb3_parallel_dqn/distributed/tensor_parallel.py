"""
Tensor parallelism for the Q-networks, as Megatron-LM splits a transformer's MLP (Shoeybi et al. 2019,
https://arxiv.org/abs/1909.08053; ``megatron/core/tensor_parallel/layers.py`` and ``mappings.py``).

Consecutive ``Linear`` layers are split in pairs across the ranks of a model group: the first of a pair is a
:class:`ColumnParallelLinear` (its output features, hence its hidden units, divided across the group: each rank
computes its slice of the activations, and an elementwise activation needs nothing else), the second a
:class:`RowParallelLinear` (its input features divided alike: each rank multiplies its slice, and one ``Allreduce``
sums the partial outputs). So a pair costs one ``Allreduce`` of activations in the forward pass, and in the backward
pass one ``Allreduce`` of the input gradient of the column layer when that input needs a gradient (it comes from
layers with weights: an earlier pair, or NatureCNN's convolutions), nothing more. The two communication steps are
Megatron's ``copy_to_tensor_model_parallel_region`` and ``reduce_from_tensor_model_parallel_region``: tiny autograd
functions, :class:`_CopyToModelGroup` and :class:`_ReduceFromModelGroup`.

:func:`shard_q_network` applies this to SB3's ``QNetwork`` and to :class:`~sb3_parallel_dqn.policies.DuelingQNetwork`:
the chain of Linear layers (NatureCNN's 3136x512 layer first, for the CNN policy) is paired from its start; with an
odd number of layers the last one stays whole on every rank (it is the small output layer), except before a dueling
head, where the unpaired layer is column-parallel and both heads row-parallel (one ``Allreduce`` each). Convolutions
stay replicated: they hold few weights, and splitting them would cost an ``Allreduce`` per layer.

Shards are cut from the whole layer that SB3 built, so a sharded network starts exactly where the unsplit one does
for the same seed. Hidden units that do not divide evenly are split as ``torch.tensor_split`` does. A shard's
``state_dict`` holds only its slice; loading a *whole* layer's tensors into a shard takes the slice
(``_load_from_state_dict``), so whole model files load into any mesh; :func:`gathered_state_dict` puts the whole
network back together (collective over the model group).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch as th
from stable_baselines3.common.torch_layers import NatureCNN
from stable_baselines3.dqn.policies import QNetwork
from torch import nn
from torch.nn import functional as F

from sb3_parallel_dqn.distributed import comm, mesh
from sb3_parallel_dqn.distributed.comm import Group
from sb3_parallel_dqn.distributed.lockstep import LockstepError

# Activations that act element by element: they may sit between the two layers of a pair.
ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.SELU, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Mish, nn.Softplus, nn.ReLU6)


# What the watchdog names when a rank of the model group never arrives (sb3_parallel_dqn.distributed.watchdog).
SPLIT_FORWARD = (
    "the split Q-network's Allreduce (a forward or backward pass: predict, q_net(...), train(), evaluation) -- every "
    "rank of a model group must run each forward pass together"
)


def allreduce_tensor(tensor: th.Tensor, group: Group | None) -> th.Tensor:
    """A new tensor: the sum of ``tensor`` over the group (staged through host memory on a GPU)."""
    out = tensor.detach().to("cpu", copy=True).contiguous()
    comm.allreduce_sum_(out.numpy(), group, what=SPLIT_FORWARD)
    return out.to(tensor.device, non_blocking=False)


# The fingerprint of the last column-parallel layer's input, per group size: the row-parallel layer that follows it
# sends it with its partial outputs (see _reduce_and_check_inputs). Set and taken within one forward pass.
_pending_fingerprint: dict[int, float] = {}
_fingerprint_weights: dict[tuple[int, th.device], th.Tensor] = {}


def input_fingerprint(x: th.Tensor) -> float:
    """
    A number that differs, almost surely, between two different inputs (position-weighted, so that a permutation
    of the batch changes it too), and is bit for bit the same for the same input on the same kind of device.
    """
    flat = x.detach().reshape(-1)
    key = (flat.numel(), flat.device)
    weights = _fingerprint_weights.get(key)
    if weights is None:
        weights = _fingerprint_weights[key] = th.linspace(1.0, 2.0, flat.numel(), dtype=th.float64, device=flat.device)
    return float((flat.double() * weights).sum())


def _reduce_and_check_inputs(partial: th.Tensor, group: Group | None, fingerprint: float) -> th.Tensor:
    """
    :func:`allreduce_tensor` of the partial outputs, with each rank's input fingerprint in a slot of its own
    appended to the same ``Allreduce`` (the others add zeros, so every rank receives every fingerprint exactly).
    Every rank of the group then raises the same :class:`LockstepError` if the pair's input differed across ranks:
    the shards of a replica computed on different observations and the Q-values would be silently wrong.
    """
    size, rank = (1, 0) if group is None else (group.Get_size(), group.Get_rank())
    values = partial.detach().to("cpu").reshape(-1)
    staged = th.zeros(values.numel() + size, dtype=th.float64 if values.dtype == th.float64 else th.float32)
    staged[: values.numel()] = values
    staged[values.numel() + rank] = fingerprint
    comm.allreduce_sum_(staged.numpy(), group, what=SPLIT_FORWARD)
    fingerprints = staged[values.numel() :]
    # Compared bit for bit: the same input gives the same bits, NaN included (as numbers, NaN != NaN).
    bits = fingerprints.numpy().view(f"u{staged.element_size()}")
    if (bits != bits[0]).any():
        raise LockstepError(
            "the ranks of a model-parallel group ran one forward pass of the split Q-network on different inputs "
            f"(input fingerprints by rank: {fingerprints.tolist()}): every rank of a model group must pass the same "
            "observations to predict, q_net(...) and the other forward passes, or the Q-values are wrong"
        )
    return staged[: values.numel()].to(partial.dtype).reshape(partial.shape).to(partial.device)


class _CopyToModelGroup(th.autograd.Function):
    """Identity forward; the backward sums the input gradient over the model group (every shard used the input)."""

    @staticmethod
    def forward(ctx: Any, x: th.Tensor, group: Group | None) -> th.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: th.Tensor) -> tuple[th.Tensor, None]:
        return allreduce_tensor(grad, ctx.group), None


class _ReduceFromModelGroup(th.autograd.Function):
    """Sums the partial outputs over the model group; the backward passes the gradient on (every shard needs it)."""

    @staticmethod
    def forward(ctx: Any, x: th.Tensor, group: Group | None, fingerprint: float | None = None) -> th.Tensor:
        return allreduce_tensor(x, group) if fingerprint is None else _reduce_and_check_inputs(x, group, fingerprint)

    @staticmethod
    def backward(ctx: Any, grad: th.Tensor) -> tuple[th.Tensor, None, None]:
        return grad, None, None


def split_bounds(size: int, parts: int) -> list[int]:
    """Where ``torch.tensor_split`` cuts ``size`` items into ``parts``: the first ``size % parts`` get one more."""
    base, extra = divmod(size, parts)
    bounds = [0]
    for part in range(parts):
        bounds.append(bounds[-1] + base + (part < extra))
    return bounds


class _ShardedLinear(nn.Module):
    """A slice of a ``Linear`` layer along ``dim`` (0: output features, 1: input features) of its weight."""

    dim: int

    def __init__(self, linear: nn.Linear, rank: int, size: int) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # The model group is looked up by size when used (mesh.get), so that the module copies and pickles.
        self.rank, self.size = rank, size
        bounds = split_bounds(linear.weight.shape[self.dim], size)
        self.start, self.stop = bounds[rank], bounds[rank + 1]
        self.weight = nn.Parameter(self.shard_of(linear.weight.detach()).clone())
        self.bias = None if linear.bias is None else nn.Parameter(self._bias_of(linear.bias.detach()).clone())

    def shard_of(self, whole: th.Tensor) -> th.Tensor:
        """This rank's slice of the whole weight (or of a tensor shaped like it, e.g. Adam's moments)."""
        return whole.narrow(self.dim, self.start, self.stop - self.start)

    def _bias_of(self, whole: th.Tensor) -> th.Tensor:
        return whole

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A whole layer's tensors (a model file, an unsplit network) load as this rank's slice.
        for name, cut in (("weight", self.shard_of), ("bias", self._bias_of)):
            tensor = state_dict.get(prefix + name)
            whole_shape = (self.out_features, self.in_features) if name == "weight" else (self.out_features,)
            if tensor is not None and tuple(tensor.shape) == whole_shape and getattr(self, name) is not None:
                state_dict[prefix + name] = cut(tensor)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def whole_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {"weight": (self.out_features, self.in_features)}
        return shapes | ({"bias": (self.out_features,)} if self.bias is not None else {})

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, shard {self.rank + 1} of {self.size}"


class ColumnParallelLinear(_ShardedLinear):
    """``y_k = x A_k^T + b_k``: rank k holds rows ``A_k`` of the weight, the output features are split."""

    dim = 0

    def _bias_of(self, whole: th.Tensor) -> th.Tensor:
        return whole.narrow(0, self.start, self.stop - self.start)

    def forward(self, x: th.Tensor) -> th.Tensor:
        _pending_fingerprint[self.size] = input_fingerprint(x)  # checked by the row-parallel layer's Allreduce
        return F.linear(_CopyToModelGroup.apply(x, mesh.get(self.size).model_group), self.weight, self.bias)


class RowParallelLinear(_ShardedLinear):
    """``y = sum_k x_k A_k^T + b``: rank k holds columns ``A_k`` of the weight and the k-th slice of the input."""

    dim = 1

    def forward(self, x: th.Tensor) -> th.Tensor:
        fingerprint = _pending_fingerprint.pop(self.size, None)
        y = _ReduceFromModelGroup.apply(F.linear(x, self.weight), mesh.get(self.size).model_group, fingerprint)
        return y if self.bias is None else y + self.bias


def _linear_slots(q_net: nn.Module) -> tuple[list[tuple[nn.Sequential, int]], list[tuple[nn.Module, str]]]:
    """
    The chain of Linear layers that carries the hidden units, as (container, index) slots in forward order, and the
    dueling heads (container, attribute) that follow it. Anything but Linears and elementwise activations is refused.
    """
    chain: list[tuple[nn.Sequential, int]] = []
    extractor = q_net.features_extractor  # type: ignore[attr-defined]
    if isinstance(extractor, NatureCNN):
        chain.append((extractor.linear, 0))
    sequence: nn.Sequential = q_net.trunk if hasattr(q_net, "trunk") else q_net.q_net  # type: ignore[assignment]
    for index, layer in enumerate(sequence):
        if type(layer) is nn.Linear:
            chain.append((sequence, index))
        elif not isinstance(layer, ELEMENTWISE):
            raise ValueError(f"model parallelism splits Linear layers and elementwise activations only, not {layer}")
    heads = [(q_net, name) for name in ("value_head", "advantage_head") if hasattr(q_net, "trunk")]
    return chain, heads


def shard_q_network(q_net: nn.Module, rank: int, size: int) -> int:
    """
    Split ``q_net`` (SB3's ``QNetwork`` or a ``DuelingQNetwork``) in place into this rank's shard (see the module
    docstring); return the number of Linear layers split. ``size == 1`` leaves it whole.
    """
    if size == 1:
        return 0
    if not isinstance(q_net, QNetwork):
        raise ValueError(f"model parallelism needs SB3's QNetwork or sb3_parallel_dqn's DuelingQNetwork, not {type(q_net)}")
    chain, heads = _linear_slots(q_net)
    n_pairs, unpaired = divmod(len(chain), 2)
    split = 0
    for pair in range(n_pairs):
        for (container, index), kind in zip(
            chain[2 * pair : 2 * pair + 2], (ColumnParallelLinear, RowParallelLinear), strict=True
        ):
            container[index] = kind(container[index], rank, size)  # type: ignore[arg-type]
            split += 1
    if unpaired and heads:
        container, index = chain[-1]
        container[index] = ColumnParallelLinear(container[index], rank, size)  # type: ignore[arg-type]
        for owner, name in heads:
            setattr(owner, name, RowParallelLinear(getattr(owner, name), rank, size))
        split += 1 + len(heads)
    return split


def sharded_modules(module: nn.Module) -> list[tuple[str, _ShardedLinear]]:
    return [(name, child) for name, child in module.named_modules() if isinstance(child, _ShardedLinear)]


def whole_shapes(module: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """The ``state_dict`` keys of ``module`` with the shapes of the whole (unsplit) network."""
    shapes = {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}
    for prefix, layer in sharded_modules(module):
        for name, shape in layer.whole_shapes().items():
            shapes[f"{prefix}.{name}"] = shape
    return list(shapes.items())


def shard_rule(module: nn.Module) -> dict[str, Callable[[th.Tensor], th.Tensor]]:
    """
    For each split tensor of ``module`` (by ``state_dict`` key), the function that cuts its shard from a whole one.
    Every other tensor is whole on every rank of the model group.
    """
    rules: dict[str, Callable[[th.Tensor], th.Tensor]] = {}
    for prefix, layer in sharded_modules(module):
        rules[f"{prefix}.weight"] = layer.shard_of
        if layer.bias is not None and layer.dim == 0:  # a row-parallel layer's bias is whole on every rank
            rules[f"{prefix}.bias"] = layer._bias_of
    return rules


def gathered_state_dict(module: nn.Module, group: Group | None) -> dict[str, th.Tensor]:
    """
    The ``state_dict`` of the whole network: each split tensor put back together from every rank's shard.
    **Collective** over the model group (one ``allgather`` of the shards).
    """
    state = {name: tensor.detach().cpu() for name, tensor in module.state_dict().items()}
    layers = sharded_modules(module)
    shards = {f"{prefix}.{name}": state[f"{prefix}.{name}"] for prefix, layer in layers for name in ("weight", "bias")
              if f"{prefix}.{name}" in state}  # fmt: skip
    by_rank = comm.allgather_object(
        shards, group, what="the gathering of the split model's shards (ParallelDQN.save, get_parameters)"
    )
    for prefix, layer in layers:
        state[f"{prefix}.weight"] = th.cat([shards_of_rank[f"{prefix}.weight"] for shards_of_rank in by_rank], dim=layer.dim)
        if layer.bias is not None and layer.dim == 0:
            state[f"{prefix}.bias"] = th.cat([shards_of_rank[f"{prefix}.bias"] for shards_of_rank in by_rank], dim=0)
    return state
