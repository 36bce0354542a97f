"""Settings that would break lockstep must fail loudly, on every rank, instead of deadlocking."""

import sys

from sb3_parallel_dqn import LockstepError, ParallelDQN, mpi_tools

if __name__ == "__main__":
    case = sys.argv[1]
    kwargs: dict = {"learning_starts": 50, "policy_kwargs": {"net_arch": [16]}}
    if case == "n_envs":
        kwargs.update(n_envs=1 + mpi_tools.rank(), vec_env_cls="dummy")
    elif case == "episodes":
        kwargs.update(train_freq=(1, "episode"))
    model = ParallelDQN("MlpPolicy", "CartPole-v1", **kwargs)
    try:
        model.learn(1_000)
    except LockstepError as error:
        print(f"rank {mpi_tools.rank()} refused: {error}", flush=True)
    else:
        print(f"rank {mpi_tools.rank()} trained anyway", flush=True)
