"""
Under mpirun -np 2: one ParallelDQN.train() step on per-rank halves of a fixed batch must equal SB3 DQN's step on the
whole batch (SGD with lr=1, so the weight change is the clipped gradient itself). :func:`check` reports, per
``max_grad_norm``, each rank's weight change, loss and weight checksum after the step, and on rank 0 SB3's (report.py,
``gradients_rank<r>.json``): tests/test_mpi.py compares them. ``mpirun -np 2 python grad_average.py OUT_DIR``.
"""

import sys
import zlib
from pathlib import Path

import numpy as np
import torch as th
from report import report
from stable_baselines3 import DQN
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.logger import configure
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.distributed import comm

BATCH_PER_RANK = 16


class FixedBatchReplayBuffer(ReplayBuffer):
    """A real ReplayBuffer whose sample() returns a batch chosen by the test, so both algorithms see the same data."""

    fixed_batch: ReplayBufferSamples

    def sample(self, batch_size, env=None):
        assert batch_size == len(self.fixed_batch.observations)
        return self.fixed_batch


def make_batch(start: int, stop: int) -> ReplayBufferSamples:
    rng = np.random.default_rng(0)  # the same global batch on every rank
    n = 2 * BATCH_PER_RANK
    tensors = (
        rng.normal(size=(n, 4)),
        rng.integers(0, 2, size=(n, 1)),
        rng.normal(size=(n, 4)),
        rng.integers(0, 2, size=(n, 1)),
        rng.normal(size=(n, 1)),
    )
    obs, actions, next_obs, dones, rewards = (th.as_tensor(t[start:stop], dtype=th.float32) for t in tensors)
    return ReplayBufferSamples(obs, actions.long(), next_obs, dones, rewards)


def q_net_weights(model) -> np.ndarray:
    return th.cat([p.detach().reshape(-1) for p in model.q_net.parameters()]).numpy().copy()


def check(out_dir: Path, max_grad_norm: float) -> None:
    kwargs = dict(
        replay_buffer_class=FixedBatchReplayBuffer,
        learning_rate=1.0,
        max_grad_norm=max_grad_norm,
        policy_kwargs={"net_arch": [32, 32], "optimizer_class": th.optim.SGD},
        seed=123 + comm.rank(),  # different torch init per rank: the broadcast must fix it
    )
    model = ParallelDQN("MlpPolicy", "CartPole-v1", **kwargs)
    model.set_logger(configure(None, []))
    rank = comm.rank()
    model.replay_buffer.fixed_batch = make_batch(rank * BATCH_PER_RANK, (rank + 1) * BATCH_PER_RANK)
    initial_state = {k: v.clone() for k, v in model.policy.state_dict().items()}
    before = q_net_weights(model)
    model.train(gradient_steps=1, batch_size=BATCH_PER_RANK)
    after = q_net_weights(model)
    # float32 values as JSON numbers: exact (float32 -> float64 -> repr -> float64 round-trips)
    measured = {"delta": (before - after).tolist(), "loss": float(model.logger.name_to_value["train/loss"])}
    measured["weights_crc"] = zlib.crc32(after.tobytes())  # all ranks must hold the same weights after the step

    if rank == 0:
        reference = DQN("MlpPolicy", "CartPole-v1", **kwargs)
        reference.set_logger(configure(None, []))
        reference.policy.load_state_dict(initial_state)
        reference.replay_buffer.fixed_batch = make_batch(0, 2 * BATCH_PER_RANK)
        ref_before = q_net_weights(reference)
        measured["reference_starts_equal"] = bool(np.array_equal(ref_before, before))
        reference.train(gradient_steps=1, batch_size=2 * BATCH_PER_RANK)
        measured["reference_delta"] = (ref_before - q_net_weights(reference)).tolist()
        measured["reference_loss"] = float(reference.logger.name_to_value["train/loss"])
    report(out_dir, "gradients", **{f"max_grad_norm={max_grad_norm:g}": measured})


if __name__ == "__main__":
    assert comm.world_size() == 2, "run me with mpirun -np 2"
    check(Path(sys.argv[1]), max_grad_norm=1e9)  # no clipping: the plain average
    check(Path(sys.argv[1]), max_grad_norm=0.05)  # clipping must act on the averaged gradient, not on each rank's
