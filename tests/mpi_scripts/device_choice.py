"""device="auto" under MPI: rank r takes cuda:{local_rank % n_gpus}. This machine may have no GPU, so the test
pretends to have `sys.argv[1]` of them; the local-rank split of the communicator is real."""

import sys

import torch as th

from sb3_parallel_dqn import mpi_tools
from sb3_parallel_dqn.parallel_dqn import pick_device

if __name__ == "__main__":
    n_gpus = int(sys.argv[1])
    th.cuda.is_available = lambda: n_gpus > 0  # type: ignore[assignment]
    th.cuda.device_count = lambda: n_gpus  # type: ignore[assignment]
    auto, cpu = pick_device("auto"), pick_device("cpu")
    print(f"rank {mpi_tools.rank()} local {mpi_tools.local_rank()} -> {auto} / {cpu}", flush=True)
