"""
PyTorch-over-MPI helpers, in the spirit of Spinning Up's ``mpi_pytorch.py``, but with one flattened ``Allreduce``
for all gradients instead of one message per parameter (as CleanRL's ``ppo_atari_multigpu.py`` does).

All helpers are free no-ops with one process.
"""

from __future__ import annotations

import ctypes
import os
import zlib
from typing import Any

import numpy as np
import torch as th

from sb3_parallel_dqn.distributed import comm


class WeightsDivergedError(RuntimeError):
    """The ranks' weights differ although data-parallel training must keep them bit-identical."""


def cuda_aware_mpi() -> bool:
    """
    Whether MPI can read CUDA device memory directly.

    Set ``SB3_PARALLEL_DQN_CUDA_AWARE_MPI=1`` (or ``0``) to force the answer. Otherwise ask the MPI library
    (Open MPI's ``MPIX_Query_cuda_support``); anything we cannot confirm counts as "no", so gradients are staged
    through pinned host memory, which always works.
    """
    forced = os.environ.get("SB3_PARALLEL_DQN_CUDA_AWARE_MPI")
    if forced is not None:
        return forced.strip().lower() in ("1", "true", "yes")
    try:
        query = ctypes.CDLL(None).MPIX_Query_cuda_support
    except (AttributeError, OSError):
        return False
    query.restype = ctypes.c_int
    return bool(query())


def broadcast_module_(module: th.nn.Module, root: int = 0, group: comm.Group | None = None) -> None:
    """
    Overwrite every parameter and buffer of ``module`` with ``root``'s values (one ``Bcast`` per dtype), over ``group``
    (default: all ranks; with model parallelism, the data group: the ranks that hold the same shard).
    """
    if comm.world_size() == 1:
        return
    by_dtype: dict[th.dtype, list[th.Tensor]] = {}
    for tensor in module.state_dict(keep_vars=True).values():
        by_dtype.setdefault(tensor.dtype, []).append(tensor)
    # Sorting by name makes every rank walk the dtypes in the same order (dict order could differ otherwise).
    for dtype in sorted(by_dtype, key=str):
        tensors = by_dtype[dtype]
        flat = th.cat([t.detach().reshape(-1).cpu() for t in tensors])
        comm.broadcast_(
            flat.numpy(), root=root, group=group, what="the broadcast of rank 0's weights (ParallelDQN constructor, learn())"
        )
        offset = 0
        with th.no_grad():
            for tensor in tensors:
                n = tensor.numel()
                tensor.copy_(flat[offset : offset + n].view_as(tensor))
                offset += n


def broadcast_optimizer_(optimizer: th.optim.Optimizer, root: int = 0, group: comm.Group | None = None) -> None:
    """Give every rank of ``group`` (default: all) ``root``'s optimizer state (e.g. Adam moments after a load)."""
    if comm.world_size() == 1:
        return
    rank = comm.rank() if group is None else group.Get_rank()
    state: dict[str, Any] | None = None
    if rank == root:
        # Send CPU tensors: load_state_dict() moves them to each rank's own parameter device.
        state = _to_cpu(optimizer.state_dict())
    state = comm.broadcast_object(state, root=root, group=group, what="the broadcast of rank 0's optimizer state (learn())")
    if rank != root:
        optimizer.load_state_dict(state)  # type: ignore[arg-type]


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, th.Tensor):
        # A copy: Adam's state may be views of one flat buffer (flat_update.py), and pickling a view sends all of it.
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {key: _to_cpu(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(value) for value in obj)
    return obj


def module_checksum(module: th.nn.Module, skip: frozenset[str] = frozenset()) -> int:
    """
    CRC32 of the raw bytes of every parameter and buffer (but the ``state_dict`` keys in ``skip``): equal iff the
    weights are bit-identical (w.h.p.).
    """
    checksum = 0
    for name, tensor in module.state_dict().items():
        if name not in skip:
            checksum = zlib.crc32(tensor.detach().cpu().contiguous().numpy().view(np.uint8), checksum)
    return checksum


def check_synced(module: th.nn.Module, n_updates: int, shards: frozenset[str] = frozenset(), model_rank: int = 0) -> None:
    """
    Raise :class:`WeightsDivergedError` on every rank if weights that must be bit-identical are not: all of them
    across the ranks, or, with model parallelism, the shards (``state_dict`` keys in ``shards``) across the ranks that
    hold the same one (same ``model_rank``) and everything else across all ranks.

    One small ``Allgather``; every rank receives the same table, so every rank raises (no rank is left waiting).
    """
    if comm.world_size() == 1:
        return
    whole = module_checksum(module)
    own = [model_rank, whole, module_checksum(module, skip=shards) if shards else whole]  # the same without shards
    table = comm.allgather(np.array(own, dtype=np.int64), what="the weight checksum check of train()")
    first_of = {int(row[0]): row for row in reversed(table)}  # the lowest rank that holds each shard
    diverged = [r for r, row in enumerate(table) if row[1] != first_of[int(row[0])][1] or row[2] != table[0][2]]
    if diverged:
        reference = "rank 0" if len(first_of) == 1 else "the lowest rank that holds the same shard"
        raise WeightsDivergedError(
            f"Weights diverged across MPI ranks after {n_updates} gradient updates: rank(s) {diverged} differ from "
            f"{reference} (weight checksums by rank: {table[:, 1].tolist()}). Every rank must apply the same averaged "
            "gradient; look for code that changes the weights on some ranks only."
        )


class SyncClock:
    """Wall-clock seconds spent in one component's gradient collectives, for ``time/mpi_sync_ms``."""

    def __init__(self) -> None:
        self.seconds, self.count = 0.0, 0

    def add(self, seconds: float, syncs: int = 1) -> None:
        """Count ``seconds`` more, and ``syncs`` more syncs (0 for a second collective of the same sync)."""
        self.seconds += seconds
        self.count += syncs

    def pop_mean_ms(self) -> float | None:
        """Mean wall-clock milliseconds per sync since the last call (``None`` if none happened)."""
        if self.count == 0:
            return None
        mean_ms = 1e3 * self.seconds / self.count
        self.seconds, self.count = 0.0, 0
        return mean_ms
