"""
One gradient step (TD loss, backward, gradient Allreduce with 2 ranks, clip, Adam) of the old and the new update
side by side in one process, so that the load of the machine hits both alike: blocks of 100 steps of each version in
turn, 15 blocks each, on the same batches; prints, per version, the median over blocks of the microseconds per step
as one JSON line (rank 0). The batch sampling (the same code in both, engine/sampling.py) is timed on its own, as
the version "sampling": a train() call's gradient step costs about the step plus that.

- ``before``: the old tree's hand-written MLP backward (``engine/mlp_gradients.py``) and its flat update on torch
  privates (functional ``adam``, ``_foreach_norm``), loaded from /tmp/before (``git archive 02488e3``);
- ``before-autograd``: autograd's backward with the old private flat update (the gain of that update alone);
- ``after``: autograd's backward and the flat update on public torch APIs (stock Adam, get_total_norm,
  clip_grads_with_norm_), this tree;
- ``after-module-forward``: ``after`` with the Q-network modules called instead of the lean forward (the gain of
  the lean forward, which needs torch's private hook registry to step aside for hooks).

Workloads: the shipped CartPole-v1 entry (MLP 64x64, batch 64, 5-step returns) and MinAtar/Breakout-v1's (MinAtarCNN,
batch 32, double Q, 3-step returns), each after 2,000 steps of collection.

    python docs/benchmarks/public_torch_apis/ab_step.py cartpole
    mpirun -np 2 python docs/benchmarks/public_torch_apis/ab_step.py cartpole
"""

import copy
import importlib.util
import json
import os
import statistics
import sys
import time

import numpy as np
import torch as th

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.distributed import comm
from sb3_parallel_dqn.engine.sampling import sample_batches
from sb3_parallel_dqn.losses import td_loss, td_target
from sb3_parallel_dqn.policies import MinAtarCNN
from sb3_parallel_dqn.updates import FlatUpdate, GradientAverager

OLD = "/tmp/before/sb3_parallel_dqn"


def _load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


old_compat = _load("old_compat", f"{OLD}/compat.py")
old_flat_update = _load("old_flat_update", f"{OLD}/engine/flat_update.py")
old_flat_update.compat = old_compat
old_mlp_gradients = _load("old_mlp_gradients", f"{OLD}/engine/mlp_gradients.py")
old_mlp_gradients.compat = old_compat
# The lean forward was deleted after this measurement (it bought less than the 20% bar): from the old tree too.
old_q_forward = _load("old_q_forward", f"{OLD}/engine/q_forward.py")
old_q_forward.compat = old_compat
q_forward = old_q_forward.q_forward

th.set_num_threads(1)
WORKLOAD = sys.argv[1]
if WORKLOAD == "cartpole":
    env, batch_size, gamma, double_q = "CartPole-v1", 64, 0.99, False
    kwargs = dict(learning_rate=2.3e-3, buffer_size=100000, learning_starts=1000, n_steps=5,
                  policy_kwargs=dict(net_arch=[64, 64]))  # fmt: skip
else:
    env, batch_size, gamma, double_q = "MinAtar/Breakout-v1", 32, 0.99, True
    kwargs = dict(learning_rate=2.5e-4, buffer_size=100000, learning_starts=5000, n_steps=3,
                  policy_kwargs=dict(features_extractor_class=MinAtarCNN, net_arch=[]))  # fmt: skip
model = ParallelDQN("MlpPolicy", env, seed=0, verbose=0, batch_size=batch_size, **kwargs)
model.learn(2000)  # fills the buffer (below learning_starts: no training)
batches = [model.replay_buffer.sample(batch_size) for _ in range(100)]
max_grad_norm = model.max_grad_norm


class Version:
    def __init__(self, name: str) -> None:
        self.name = name
        self.q_net, self.target = copy.deepcopy(model.q_net), copy.deepcopy(model.q_net_target)
        parameters = list(self.q_net.parameters())
        self.optimizer = th.optim.Adam(parameters, lr=model.learning_rate)
        self.averager = GradientAverager(parameters) if comm.world_size() > 1 else None
        grad_buffer = None if self.averager is None else self.averager.buffer
        flat_update_class = FlatUpdate if name.startswith("after") else old_flat_update.FlatUpdate
        self.update = flat_update_class(parameters, self.optimizer, grad_buffer)
        lean = name != "after-module-forward"
        self.online_q = q_forward(self.q_net) if lean else self.q_net
        self.target_q = q_forward(self.target) if lean else self.target
        self.mlp = None
        if name == "before":
            self.mlp = old_mlp_gradients.mlp_td_gradients(self.q_net, self.update.parameters, self.update.grads)
        self.times: list[float] = []

    def step(self, batch) -> None:
        if self.mlp is None:
            loss, _ = td_loss(self.online_q, self.target_q, batch, gamma, double_q)
            self.update.zero_grad()
            loss.backward()
        else:
            loss, _ = self.mlp(batch, td_target(self.online_q, self.target_q, batch, gamma, double_q))
        if self.averager is not None:
            self.averager.average_(loss, reattach=False)
        self.update.clip_grad_norm_(max_grad_norm)
        self.update.step()

    def block(self) -> None:
        comm.allreduce_sum_(np.zeros(1), what="the block's start")  # the ranks start each block together
        start = time.perf_counter()
        for batch in batches:
            self.step(batch)
        self.times.append((time.perf_counter() - start) / len(batches) * 1e6)


names = ["before", "before-autograd", "after", "after-module-forward"]
if WORKLOAD != "cartpole":
    names = ["before", "after"]  # no MLP: the old tree used autograd and the modules here too
versions = [Version(name) for name in names]
for version in versions:
    version.block()  # warm-up
    version.times.clear()
sampling = Version("sampling")  # times the batched sampling of 100 gradient steps, as train() does it
for _ in range(15):
    for version in versions:
        version.block()
    start = time.perf_counter()
    for _ in sample_batches(model.replay_buffer, len(batches), batch_size):
        pass
    sampling.times.append((time.perf_counter() - start) / len(batches) * 1e6)
if comm.rank() == 0:
    for version in [*versions, sampling]:
        print(json.dumps({"version": version.name, "workload": WORKLOAD, "ranks": comm.world_size(),
                          "median_us": statistics.median(version.times), "min_us": min(version.times),
                          "load": os.getloadavg()[0]}))  # fmt: skip
