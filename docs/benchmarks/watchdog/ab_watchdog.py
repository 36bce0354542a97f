"""
What the collective watchdog (sb3_parallel_dqn.distributed.watchdog) costs on the per-step gradient path, under
``mpirun -np 2``, on the shipped CartPole-v1 entry after 6,000 steps of learning.

The machine is shared and its speed drifts by more than the effect, so the watchdog is switched on and off *inside*
one job, in alternating blocks, both ranks together: on, the package as shipped; off, its bookkeeping calls
(``enter``/``leave``) replaced by no-ops and its thread stopped. Per block: ``train(64 gradient steps)`` and 500
gradient-sized ``Allreduce`` calls through the package's helper. Rank 0 prints one JSON line: per block, the
microseconds per update and per ``Allreduce``, and the state.

Run from the repository root::

    mpirun -np 2 python docs/benchmarks/watchdog/ab_watchdog.py >> docs/benchmarks/watchdog/results.jsonl
    python docs/benchmarks/build_tables.py  # the tables of the docs, this one in _generated/watchdog.rst
"""

import json
import threading
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
gradient = np.zeros(sum(p.numel() for p in model.policy.q_net.parameters()), dtype=np.float32)
ENTER, LEAVE, DOG = watchdog.enter, watchdog.leave, watchdog._watchdog
assert DOG is not None, "run under mpirun -np 2 with the watchdog on"


def switch(on: bool) -> None:
    if on:
        watchdog.enter, watchdog.leave = ENTER, LEAVE
        DOG.stop.clear()
        DOG.thread = threading.Thread(target=DOG.run, daemon=True)
        DOG.thread.start()
    else:
        DOG.stop.set()
        DOG.thread.join()
        watchdog.enter = watchdog.leave = lambda *args: None  # type: ignore[assignment]


blocks = []
for block in range(40):
    on = block % 2 == 0
    switch(on)
    comm.allreduce_sum_(np.zeros(1))  # start together
    start = time.perf_counter()
    model.train(64, kwargs["batch_size"])
    update_us = (time.perf_counter() - start) / 64 * 1e6
    start = time.perf_counter()
    for _ in range(500):
        comm.allreduce_sum_(gradient)
    blocks.append({"on": on, "update_us": update_us, "allreduce_us": (time.perf_counter() - start) / 500 * 1e6})
switch(True)
if comm.rank() == 0:
    print(json.dumps({"numbers": int(gradient.size), "blocks": blocks}))
