"""
What the collective watchdog (sb3_parallel_dqn.distributed.watchdog) costs on the per-step gradient path, under
``mpirun -np 2``: the shipped CartPole-v1 entry's update (``train(320 gradient steps)`` five times after 6,000 steps
of learning; median microseconds per update, as rank 0 measured it), and the gradient ``Allreduce`` alone (the
package's helper on the same 4,610 float32 numbers, 5,000 times). One line of JSON per run.

Run from the repository root, alternating watchdog on and off (``SB3_PARALLEL_DQN_WATCHDOG=0``)::

    for i in 1 2 3 4 5 6; do for w in 1 0; do
      SB3_PARALLEL_DQN_WATCHDOG=$w mpirun -np 2 python docs/benchmarks/watchdog/ab_watchdog.py; done; done \
      >> docs/benchmarks/watchdog/results.jsonl
    python docs/benchmarks/watchdog/table.py  # the table in docs/BENCHMARKS.md
"""

import json
import os
import time

import numpy as np
import torch as th

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.distributed import comm, watchdog

th.set_num_threads(1)
kwargs = dict(learning_rate=2.3e-3, batch_size=64, buffer_size=100000, learning_starts=1000, target_update_interval=10,
              train_freq=128, gradient_steps=64, n_steps=5, exploration_fraction=0.16, exploration_final_eps=0.04,
              policy_kwargs=dict(net_arch=[64, 64]))  # fmt: skip
model = ParallelDQN("MlpPolicy", "CartPole-v1", seed=0, verbose=0, **kwargs)
model.learn(6000)
per_update_us = []
for _ in range(5):
    comm.allreduce_sum_(np.zeros(1))  # start together
    start = time.perf_counter()
    model.train(320, kwargs["batch_size"])
    per_update_us.append((time.perf_counter() - start) / 320 * 1e6)
gradient = np.zeros(sum(p.numel() for p in model.policy.q_net.parameters()), dtype=np.float32)
comm.allreduce_sum_(np.zeros(1))
allreduce_us = comm.time_allreduce(gradient, repetitions=5_000) * 1e6
if comm.rank() == 0:
    print(json.dumps({"watchdog": watchdog._watchdog is not None, "env": os.environ.get("SB3_PARALLEL_DQN_WATCHDOG", "1"),
                      "update_median_us": float(np.median(per_update_us)), "update_min_us": min(per_update_us),
                      "allreduce_us": allreduce_us, "numbers": int(gradient.size)}))  # fmt: skip
