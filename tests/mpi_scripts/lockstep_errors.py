"""
Settings that would break lockstep must fail loudly, on every rank, before any training collective, naming the
setting and each rank's value. One job tries every case in turn (each refused on both ranks, so both go on).

The launcher's local-rank variable is removed first, so that the constructor (every rank runs it) has to find each
rank's local rank with a collective, once; then the devices ``"auto"`` picks (device_choice.py). Each rank reports
(report.py, ``lockstep_rank<r>.json``), for each case, the LockstepError's message (null where it trained anyway),
and the devices. ``mpirun -np 2 python lockstep_errors.py OUT_DIR``; tests/test_mpi.py holds the expected messages.
"""

import os
import sys

del os.environ["MPI_LOCALRANKID"]  # before the package reads the launcher's variables

# isort: split
from sb3_parallel_dqn import LockstepError, ParallelDQN, PrioritizedReplayBuffer
from sb3_parallel_dqn.distributed import comm

# isort: split
from device_choice import devices
from report import report

RANK = comm.rank()
# Each case: keyword arguments of rank 0 and of rank 1 (constructor) or of learn() ("budget": 1000 steps on rank 0,
# 1001 on rank 1).
CASES = {
    "n_envs": ({"n_envs": 1}, {"n_envs": 2, "vec_env_cls": "dummy"}),
    "episodes": ({"train_freq": (1, "episode")}, {"train_freq": (1, "episode")}),
    "buffer": ({}, {"replay_buffer_class": PrioritizedReplayBuffer}),
    "n_steps": ({"n_steps": 1}, {"n_steps": 3}),
    "gradient_steps": ({"gradient_steps": 1}, {"gradient_steps": 2}),
    "batch_size": ({"batch_size": 32}, {"batch_size": 64}),
    "double_q": ({"double_q": False}, {"double_q": True}),
    "shapes": ({"policy_kwargs": {"net_arch": [16]}}, {"policy_kwargs": {"net_arch": [17]}}),
    "budget": ({}, {}),
}

if __name__ == "__main__":
    out_dir = sys.argv[1]
    refused: dict[str, str | None] = {}
    for name, (rank0, rank1) in CASES.items():
        kwargs: dict = {"learning_starts": 50, "policy_kwargs": {"net_arch": [16]}, **(rank1 if RANK else rank0)}
        try:
            model = ParallelDQN("MlpPolicy", "CartPole-v1", **kwargs)
            model.learn(1_000 + (RANK if name == "budget" else 0))
        except LockstepError as error:
            refused[name] = str(error)  # must say what differs, with each rank's value
        else:
            refused[name] = None  # trained anyway
        report(out_dir, "lockstep", refused=refused)
    report(out_dir, "lockstep", devices=devices(n_gpus=2))
