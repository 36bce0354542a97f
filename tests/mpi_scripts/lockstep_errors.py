"""
Settings that would break lockstep must fail loudly, on every rank, before any training collective, naming the
setting and each rank's value. One job tries every case in turn (each refused on both ranks, so both go on).

The launcher's local-rank variable is removed first, so that the constructor (every rank runs it) has to find each
rank's local rank with a collective, once; the last lines report the devices ``"auto"`` picks (device_choice.py).
"""

import os

del os.environ["MPI_LOCALRANKID"]  # before the package reads the launcher's variables

# isort: split
from sb3_parallel_dqn import LockstepError, ParallelDQN, PrioritizedReplayBuffer
from sb3_parallel_dqn.distributed import comm

# isort: split
from device_choice import report_devices

RANK = comm.rank()
# Each case: keyword arguments of rank 0 and of rank 1 (constructor) or of learn(); and the expected message.
CASES = [
    ("n_envs", {"n_envs": 1}, {"n_envs": 2, "vec_env_cls": "dummy"}, "n_envs: [1, 2]"),
    ("episodes", {"train_freq": (1, "episode")}, {"train_freq": (1, "episode")}, "counts episodes"),
    ("buffer", {}, {"replay_buffer_class": PrioritizedReplayBuffer}, "replay_buffer_class: ['ReplayBuffer', 'Prioritized"),
    ("n_steps", {"n_steps": 1}, {"n_steps": 3}, "n_steps: [1, 3]"),
    ("gradient_steps", {"gradient_steps": 1}, {"gradient_steps": 2}, "gradient_steps: [1, 2]"),
    ("batch_size", {"batch_size": 32}, {"batch_size": 64}, "batch_size: [32, 64]"),
    ("double_q", {"double_q": False}, {"double_q": True}, "double_q: [False, True]"),
    (
        "shapes",
        {"policy_kwargs": {"net_arch": [16]}},
        {"policy_kwargs": {"net_arch": [17]}},
        "parameters: [[('q_net.q_net.0.weight', (16, 4)), ",
    ),
    ("budget", {}, {}, "total_timesteps: [1000, 1001]"),
]

if __name__ == "__main__":
    for name, rank0, rank1, message in CASES:
        kwargs: dict = {"learning_starts": 50, "policy_kwargs": {"net_arch": [16]}, **(rank1 if RANK else rank0)}
        try:
            model = ParallelDQN("MlpPolicy", "CartPole-v1", **kwargs)
            model.learn(1_000 + (RANK if name == "budget" else 0))
        except LockstepError as error:
            # One line per rank and case; the message must say what differs, with each rank's value.
            verdict = "OK" if message in str(error) else f"WRONG MESSAGE {error}"
            print(f"rank {RANK} refused {name}: {verdict}", flush=True)
        else:
            print(f"rank {RANK} trained anyway: {name}", flush=True)
    report_devices(n_gpus=2)
