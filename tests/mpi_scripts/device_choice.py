"""device="auto" under MPI: rank r takes cuda:{local_rank % n_gpus}. This machine may have no GPU, so the test
pretends to have `sys.argv[1]` of them. With "hide" as `sys.argv[2]`, the launcher's local-rank variable is removed
first, so that the constructor's shared-memory split of the communicator has to find it."""

import os
import sys

if len(sys.argv) > 2 and sys.argv[2] == "hide":
    del os.environ["MPI_LOCALRANKID"]  # before the package reads the launcher's variables

import torch as th

from sb3_parallel_dqn import mpi_tools
from sb3_parallel_dqn.parallel_dqn import pick_device

if __name__ == "__main__":
    n_gpus = int(sys.argv[1])
    th.cuda.is_available = lambda: n_gpus > 0  # type: ignore[assignment]
    th.cuda.device_count = lambda: n_gpus  # type: ignore[assignment]
    published = mpi_tools.local_rank()
    auto, cpu = pick_device("auto", collective=True), pick_device("cpu")
    print(f"rank {mpi_tools.rank()} local {published}/{mpi_tools.local_rank()} -> {auto} / {cpu}", flush=True)
