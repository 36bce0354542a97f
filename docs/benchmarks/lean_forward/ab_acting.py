"""
What the lean Q-network forward (``engine/q_forward.py``, which relies on torch's private global-hook registry
through ``compat.has_hooks``) buys in collection: CartPole-v1, one process, the zoo's network ([256, 256]),
greedy actions after ``learning_starts`` (exploration 0), no gradient steps, so that every env step runs one
forward. Alternating blocks in one process: ``lean`` (as shipped) and ``module`` (the forward replaced by the
module call, as SB3's ``policy.predict`` minus its wrapper). One JSON line: env steps per second per block.

    python docs/benchmarks/lean_forward/ab_acting.py >> docs/benchmarks/lean_forward/results.jsonl
"""

import json
import time

import torch as th

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.engine import collector

th.set_num_threads(1)
LEAN = collector.q_forward
model = ParallelDQN("MlpPolicy", "CartPole-v1", learning_starts=0, gradient_steps=0, exploration_initial_eps=0.0,
                    exploration_final_eps=0.0, policy_kwargs=dict(net_arch=[256, 256]), seed=0)  # fmt: skip
model.learn(500)  # warm-up
blocks = []
for block in range(12):
    lean = block % 2 == 0
    collector.q_forward = LEAN if lean else (lambda net: net)  # type: ignore[assignment]
    start = time.perf_counter()
    model.learn(3000, reset_num_timesteps=False)
    blocks.append({"lean": lean, "steps_per_s": 3000 / (time.perf_counter() - start)})
print(json.dumps({"blocks": blocks}))
