"""Train on every rank with prioritized replay, a dueling head, Double DQN and 3-step returns, with 2 envs per rank in
SubprocVecEnv workers (SB3's default forkserver start method); record what each rank saw.

For every gradient step each rank records the largest raw importance weight of its own batch and the one it divided
by, which must be the largest over all ranks.
"""

import sys
from pathlib import Path

import numpy as np
from report import report

from sb3_parallel_dqn import ParallelDQN, PrioritizedReplayBuffer
from sb3_parallel_dqn.distributed import comm


def run(out_dir: Path, vec_env_cls: str = "subproc") -> None:
    rank = comm.rank()
    model = ParallelDQN(
        "MlpPolicy",
        "CartPole-v1",
        n_envs=2,
        vec_env_cls=vec_env_cls,
        learning_starts=200,
        train_freq=8,
        gradient_steps=4,
        target_update_interval=100,
        buffer_size=5_000,
        batch_size=32,
        n_steps=3,
        double_q=True,
        replay_buffer_class=PrioritizedReplayBuffer,
        replay_buffer_kwargs={"alpha": 0.6, "beta": 0.4},
        policy_kwargs={"net_arch": [32, 32], "dueling": True},
        sync_check_interval=10,
        seed=11,
    )
    local_max, divided_by = [], []
    sample_prioritized = model.replay_buffer.sample_prioritized
    allreduce_max_ = comm.allreduce_max_

    def recording_sample(*args, **kwargs):
        replay_data, weights, leaves = sample_prioritized(*args, **kwargs)
        local_max.append(float(weights.max()))
        return replay_data, weights, leaves

    def recording_allreduce_max_(array, group=None, what="Allreduce (max)"):
        result = allreduce_max_(array, group, what)
        divided_by.append(float(result[0]))
        return result

    model.replay_buffer.sample_prioritized = recording_sample
    comm.allreduce_max_ = recording_allreduce_max_
    try:
        model.learn(2_000)
    finally:
        comm.allreduce_max_ = allreduce_max_
    state = {name: tensor.cpu().numpy() for name, tensor in model.policy.state_dict().items()}
    np.savez(out_dir / f"weights_rank{rank}.npz", **state)
    buffer = model.replay_buffer
    info = {
        "n_updates": model._n_updates,
        "local_max": local_max,
        "divided_by": divided_by,
        "beta": buffer.beta,
        "n_steps": buffer.n_steps,
        "distinct_priorities": int(np.unique(buffer.tree.priorities[: buffer.size() * buffer.n_envs]).size),
    }
    report(out_dir, "info", **info)
    model.env.close()


if __name__ == "__main__":
    run(Path(sys.argv[1]))
