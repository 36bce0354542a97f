"""Process set-up of each rank: torch threads, and the device that ``device="auto"`` picks under MPI."""

from __future__ import annotations

import os

import torch as th

from sb3_parallel_dqn.distributed import comm


def set_torch_threads(torch_num_threads: int | None) -> None:
    """
    Set torch's intra-op threads for this process.

    ``None`` means 1 unless ``OMP_NUM_THREADS`` is set (torch already follows it). Measured on a 2-core machine:
    SB3 DQN on CartPole took 129 s with torch's default 2 threads and 19 s with 1, because small matrix products
    gain nothing from threads while ranks and env workers fight over the cores.

    ``ParallelDQN(...)`` calls it with its ``torch_num_threads``; ``ParallelDQN.load`` only when the file's value or
    its own argument is a number, so that loading never undoes the process' own ``th.set_num_threads``.
    """
    if torch_num_threads is None:
        if "OMP_NUM_THREADS" in os.environ:
            return
        torch_num_threads = 1
    if torch_num_threads < 1:
        raise ValueError(f"torch_num_threads must be >= 1 or None, not {torch_num_threads}")
    if th.get_num_threads() != torch_num_threads:
        th.set_num_threads(torch_num_threads)


def pick_device(device: th.device | str, collective: bool = False) -> th.device | str:
    """
    ``"auto"`` under MPI spreads ranks over the host's GPUs: ``cuda:{local_rank % n_gpus}``.

    The local rank comes from the launcher's environment (:func:`comm.local_rank`), which needs no collective, so that
    one rank alone may pick a device (``ParallelDQN.load`` on rank 0). Where the launcher does not publish it,
    ``collective=True`` (only where every rank runs: the constructor) computes it once for the process; otherwise the
    global rank stands in for it.
    """
    if device != "auto" or comm.world_size() == 1:
        return device
    local_rank = comm.compute_local_rank() if collective else comm.local_rank()
    if th.cuda.is_available():
        index = comm.rank() if local_rank is None else local_rank
        return th.device(f"cuda:{index % th.cuda.device_count()}")
    return device
