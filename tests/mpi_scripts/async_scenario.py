"""
The asynchronous mode (issue 25) on CartPole: ``async_scenario.py FOLDER TOTAL_STEPS [KWARGS_JSON]`` under
``mpirun -np W``
trains ``ParallelDQN(..., learner_ranks=1)`` and each rank reports (report.py) its role, step and update counts,
a checksum of its final weights, and on the learner the measured stats (inserted, sent, replay ratio).
"""

import dataclasses
import json
import sys
import zlib
from pathlib import Path

import torch as th
from report import report

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.distributed import comm

if __name__ == "__main__":
    folder, total = Path(sys.argv[1]), int(sys.argv[2])
    kwargs = dict(
        learner_ranks=1,
        learning_starts=200,
        buffer_size=5_000,
        batch_size=32,
        train_freq=4,
        target_update_interval=250,
        policy_kwargs=dict(net_arch=[32]),
        seed=0,
        weight_sync_interval=5,
    )
    kwargs |= json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    if "replay_buffer_class" in kwargs:
        import sb3_parallel_dqn

        kwargs["replay_buffer_class"] = getattr(sb3_parallel_dqn, kwargs["replay_buffer_class"])
    model = ParallelDQN("MlpPolicy", "CartPole-v1", **kwargs)
    model.learn(total)
    flat = th.nn.utils.parameters_to_vector(model.q_net.parameters()).detach().numpy()
    values = {"role": model._mesh.role, "num_timesteps": model.num_timesteps, "n_updates": model._n_updates,
              "weights_crc": zlib.crc32(flat.tobytes())}  # fmt: skip
    stats = getattr(model, "async_stats", None)
    if stats is not None:
        values |= dataclasses.asdict(stats) | {"buffer_size": model.replay_buffer.size()}
    model.save(folder / "model.zip")
    report(folder, "async", **values, rank=comm.rank())
