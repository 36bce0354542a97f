"""
The per-update cost of ``ParallelDQN.train()`` before and after the hand-written MLP backward (b716b9f), on the
shipped CartPole-v1 and Acrobot-v1 entries, after 6,000 steps of learning: 5 calls of ``train(320 gradient steps)``,
the median and the minimum of the per-update microseconds (printed by rank 0).

Run from the repository root, alternating the two versions, with the old commit in /tmp/old
(``git worktree add /tmp/old 1abab35``)::

    for i in 1 2 3 4; do for v in /tmp/old .; do for env in CartPole-v1 Acrobot-v1; do
      PYTHONPATH=$v python docs/benchmarks/mlp_backward_ab/ab_update.py $env; done; done; done  # one_process.txt

Under ``mpirun -np 2`` the spread between runs of one version (up to 1.5x) was larger than the difference.
"""

import json
import sys
import time

import numpy as np
import torch as th

import sb3_parallel_dqn
from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.buffers.prioritized import PrioritizedReplayBuffer
from sb3_parallel_dqn.distributed import comm

th.set_num_threads(1)
ENV = sys.argv[1]
if ENV == "CartPole-v1":
    kwargs = dict(learning_rate=2.3e-3, batch_size=64, buffer_size=100000, learning_starts=1000, target_update_interval=10,
                  train_freq=128, gradient_steps=64, n_steps=5, exploration_fraction=0.16, exploration_final_eps=0.04,
                  policy_kwargs=dict(net_arch=[64, 64]))  # fmt: skip
else:
    kwargs = dict(learning_rate=1e-3, batch_size=128, buffer_size=50000, learning_starts=0, target_update_interval=250,
                  train_freq=16, gradient_steps=8, n_steps=3, double_q=True, replay_buffer_class=PrioritizedReplayBuffer,
                  exploration_fraction=0.12, exploration_final_eps=0.05, policy_kwargs=dict(net_arch=[64, 64]))  # fmt: skip
model = ParallelDQN("MlpPolicy", ENV, seed=0, verbose=0, **kwargs)
model.learn(6000)
per_update_us = []
for _ in range(5):
    start = time.perf_counter()
    model.train(320, kwargs["batch_size"])
    per_update_us.append((time.perf_counter() - start) / 320 * 1e6)
if comm.rank() == 0:
    print(json.dumps({"src": sb3_parallel_dqn.__file__, "env": ENV, "median_us": float(np.median(per_update_us)),
                      "min_us": min(per_update_us)}))  # fmt: skip
