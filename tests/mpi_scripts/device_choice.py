"""
``device="auto"`` under MPI: rank r takes ``cuda:{local_rank % n_gpus}``. This machine may have no GPU, so
:func:`report_devices` pretends to have ``n_gpus`` of them (call it last: it changes torch.cuda for the process). It
prints, for each rank, the local rank as the launcher published it (None when hidden), the one the package uses
(published, or computed once by the constructor), and the devices that ``"auto"`` and ``"cpu"`` give.
"""

import torch as th

from sb3_parallel_dqn.distributed import comm
from sb3_parallel_dqn.distributed.devices import pick_device


def report_devices(n_gpus: int) -> None:
    th.cuda.is_available = lambda: n_gpus > 0  # type: ignore[assignment]
    th.cuda.device_count = lambda: n_gpus  # type: ignore[assignment]
    published = comm._LAUNCHER_ENV.get("MPI_LOCALRANKID")
    auto, cpu = pick_device("auto", collective=True), pick_device("cpu")
    print(f"rank {comm.rank()} local {published}/{comm.local_rank()} -> {auto} / {cpu}", flush=True)
