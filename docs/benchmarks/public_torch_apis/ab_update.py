"""
The per-update cost of ``ParallelDQN.train()`` before and after the public-torch-API update (issue 24, item 3), on
the shipped CartPole-v1 entry and the shipped MinAtar/Breakout-v1 entry (sb3_parallel_dqn/zoo/configs/dqn.yml), after
6,000 steps of learning: 5 calls of ``train(N gradient steps)``, the median and the minimum of the per-update
microseconds (printed by rank 0 as one JSON line), one torch thread per process. Wall-clock time, and the CPU time of
the process (rank 0's), which other work on a loaded machine disturbs much less than the wall-clock time (with 2
ranks it includes MPI's busy wait for the other rank).

``VARIANT=before-autograd`` (on the old tree only) switches the hand-written MLP backward off, so that the old tree
runs autograd's backward with its private Adam/norm: the gain of each private path on its own.
``VARIANT=module-forward`` runs the Q-network modules themselves instead of the lean forward (engine/q_forward.py,
which needs torch's private global-hook registry): that path's gain.

Run from the repository root, alternating the versions, with the old commit's files in /tmp/before
(``git archive 02488e3 | tar -x -C /tmp/before``); run_ab.sh does it, table.py turns the lines into the table.
"""

import json
import os
import sys
import time

import numpy as np
import torch as th

import sb3_parallel_dqn
from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.distributed import comm
from sb3_parallel_dqn.policies import MinAtarCNN

th.set_num_threads(1)
WORKLOAD = sys.argv[1]
VARIANT = os.environ.get("VARIANT", "")
if VARIANT == "before-autograd":
    import sb3_parallel_dqn.engine.engine as engine_module

    engine_module.mlp_td_gradients = lambda *args: None  # type: ignore[attr-defined]
elif VARIANT == "module-forward":
    import sb3_parallel_dqn.engine.engine as engine_module

    engine_module.q_forward = lambda q_net: q_net  # type: ignore[assignment]

if WORKLOAD == "cartpole":
    env, steps = "CartPole-v1", 320
    kwargs = dict(learning_rate=2.3e-3, batch_size=64, buffer_size=100000, learning_starts=1000, target_update_interval=10,
                  train_freq=128, gradient_steps=64, n_steps=5, exploration_fraction=0.16, exploration_final_eps=0.04,
                  policy_kwargs=dict(net_arch=[64, 64]))  # fmt: skip
elif WORKLOAD == "minatar":
    env, steps = "MinAtar/Breakout-v1", 160
    kwargs = dict(learning_rate=2.5e-4, batch_size=32, buffer_size=100000, learning_starts=5000, target_update_interval=1000,
                  train_freq=1, gradient_steps=1, n_steps=3, double_q=True, exploration_fraction=0.2,
                  exploration_initial_eps=1.0, exploration_final_eps=0.1,
                  policy_kwargs=dict(features_extractor_class=MinAtarCNN, net_arch=[]))  # fmt: skip
else:
    raise SystemExit(f"unknown workload {WORKLOAD}")
model = ParallelDQN("MlpPolicy", env, seed=0, verbose=0, **kwargs)
model.learn(6000)
per_update_us, per_update_cpu_us = [], []
for _ in range(5):
    start, start_cpu = time.perf_counter(), time.process_time()
    model.train(steps, kwargs["batch_size"])
    per_update_us.append((time.perf_counter() - start) / steps * 1e6)
    per_update_cpu_us.append((time.process_time() - start_cpu) / steps * 1e6)
if comm.rank() == 0:
    src = "after" if "/work/wt-torch/" in sb3_parallel_dqn.__file__ else "before"
    print(json.dumps({"version": src + (f" ({VARIANT})" if VARIANT else ""), "workload": WORKLOAD,
                      "ranks": comm.world_size(), "median_us": float(np.median(per_update_us)),
                      "min_us": min(per_update_us), "median_cpu_us": float(np.median(per_update_cpu_us)),
                      "min_cpu_us": min(per_update_cpu_us), "load": os.getloadavg()[0]}))  # fmt: skip
