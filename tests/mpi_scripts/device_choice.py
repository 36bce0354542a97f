"""
``device="auto"`` under MPI: rank r takes ``cuda:{local_rank % n_gpus}``. This machine may have no GPU, so
:func:`devices` pretends to have ``n_gpus`` of them (call it last: it changes torch.cuda for the process). It returns,
for this rank, the local rank as the launcher published it (None when hidden), the one the package uses (published,
or computed once by the constructor), and the devices that ``"auto"`` and ``"cpu"`` give.
"""

import torch as th

from sb3_parallel_dqn.distributed import comm
from sb3_parallel_dqn.distributed.devices import pick_device


def devices(n_gpus: int) -> dict:
    th.cuda.is_available = lambda: n_gpus > 0  # type: ignore[assignment]
    th.cuda.device_count = lambda: n_gpus  # type: ignore[assignment]
    return {
        "published_local_rank": comm._LAUNCHER_ENV.get("MPI_LOCALRANKID"),
        "local_rank": comm.local_rank(),
        "auto": str(pick_device("auto", collective=True)),
        "cpu": str(pick_device("cpu")),
    }
