"""Train briefly on every rank with SubprocVecEnv workers; write each rank's weights and what it saw.

Imports mpi4py at top level on purpose: spawn/forkserver workers re-import this module, which used to crash
in MPI_Init under mpirun (`PMI_Init returned -1`).
"""

import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI  # noqa: F401 - the import itself is what this script tests
from report import report

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.distributed import comm


def run(out_dir: Path, start_method: str, n_steps: int = 1) -> None:
    rank = comm.rank()
    model = ParallelDQN(
        "MlpPolicy",
        "CartPole-v1",
        n_envs=2,
        vec_env_cls="subproc",
        vec_env_kwargs={"start_method": start_method},
        learning_starts=200,
        train_freq=4,
        target_update_interval=100,
        buffer_size=5_000,
        n_steps=n_steps,
        policy_kwargs={"net_arch": [32, 32]},
        sync_check_interval=50,
        tensorboard_log=str(out_dir / "tb"),
        seed=7,
        verbose=1,
    )
    # set_random_seed() in the constructor queued these seeds for the first reset
    env_seeds = list(model.env._seeds)
    model.learn(2_000)
    model.save(out_dir / "model")
    state = {name: tensor.cpu().numpy() for name, tensor in model.policy.state_dict().items()}
    np.savez(out_dir / f"weights_rank{rank}.npz", **state)
    info = {
        "world_size": comm.world_size(),
        "num_timesteps": model.num_timesteps,
        "n_updates": model._n_updates,
        "local_episode_rewards": [float(ep["r"]) for ep in model.ep_info_buffer],
        "global_episode_means": model._collector.episode_means,
        "env_seeds": env_seeds,
        "buffer": type(model.replay_buffer).__name__,
    }
    report(out_dir, "info", **info)
    model.env.close()


if __name__ == "__main__":
    run(Path(sys.argv[2]), sys.argv[1], int(sys.argv[3]) if len(sys.argv) > 3 else 1)
