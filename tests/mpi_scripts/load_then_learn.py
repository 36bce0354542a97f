"""
load() and set_parameters() are local; the next learn() gives every rank rank 0's weights and optimizer state. Each
rank reports (report.py, ``load_rank<r>.json``) whether it loaded and predicted alone (rank 0), and after the learn():
its weight checksum, a digest of its Adam moments and its step count. ``mpirun -np 2 python load_then_learn.py OUT_DIR``.
"""

import hashlib
import sys
from pathlib import Path

import numpy as np
import torch as th
from report import report

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.distributed import comm
from sb3_parallel_dqn.distributed.gradients import module_checksum

KWARGS = {"learning_starts": 100, "train_freq": 4, "buffer_size": 2_000, "policy_kwargs": {"net_arch": [16]}}


def run(out_dir: Path) -> None:
    path = out_dir / "model.zip"
    world = comm.comm()
    assert world is not None and world.Get_size() == 2
    model = ParallelDQN("MlpPolicy", "CartPole-v1", seed=0, **KWARGS).learn(600)
    model.save(path)
    world.Barrier()  # the file is complete before anyone reads it

    # Rank 0 alone loads and predicts (e.g. to evaluate): must not wait for the other rank.
    if comm.rank() == 0:
        alone = ParallelDQN.load(path)
        alone.predict(np.zeros((1, 4), dtype=np.float32), deterministic=True)
        report(out_dir, "load", loaded_alone=True)
    world.Barrier()

    # Every rank loads, then rank 1 drifts away on purpose; learn() must bring it back to rank 0's state.
    resumed = ParallelDQN.load(path, env=model.get_env())
    if comm.rank() == 1:
        params = resumed.get_parameters()
        params["policy"] = {name: tensor + 0.5 for name, tensor in params["policy"].items()}
        resumed.set_parameters(params)
        for state in resumed.policy.optimizer.state.values():
            state["exp_avg"].add_(1.0)
    resumed.learn(400, reset_num_timesteps=False)

    moments = th.cat([state["exp_avg"].reshape(-1) for state in resumed.policy.optimizer.state_dict()["state"].values()])
    report(
        out_dir,
        "load",
        checksum=module_checksum(resumed.policy),
        adam_exp_avg=hashlib.sha256(moments.numpy().tobytes()).hexdigest(),
        num_timesteps=resumed.num_timesteps,
    )


if __name__ == "__main__":
    run(Path(sys.argv[1]))
