"""
The SB3 habits of an MPI user, under ``mpirun -np 2``:

- ``from mpi4py import MPI`` first, then ``make_vec_env(..., vec_env_cls=SubprocVecEnv)`` with SB3's default start
  method (``forkserver`` where available) and ``spawn`` (spawn/forkserver workers re-import this script, and with it
  mpi4py: they crashed in ``MPI_Init``, ``PMI_Init returned -1``, while they inherited the launcher's variables);
- rank 0 alone loads a model (``device="auto"``) before any model was built: this used to hang in a collective
  that the other rank never joined;
- ``device="auto"`` maps rank r to ``cuda:{local_rank % n_gpus}``, the local rank as the launcher published it (this
  machine may have no GPU: the script pretends to have 2 at the end).

Usage: ``user_vec_envs.py MODEL.zip OUT_DIR``. Each rank reports (report.py, ``user_vec_envs_rank<r>.json``): the device
of rank 0's lone load; for each start method, the workers' process class and, after learn(), the rank's weight
checksum, step count and gradient updates; the devices ``"auto"`` picks.
"""

import multiprocessing
import sys

import numpy as np

# The order: mpi4py first (MPI initialised by the script), SB3, then this package.
from mpi4py import MPI
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import SubprocVecEnv

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.distributed.gradients import module_checksum

# isort: split
from device_choice import devices
from report import report

if __name__ == "__main__":
    out_dir = sys.argv[2]
    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    if rank == 0:
        alone = ParallelDQN.load(sys.argv[1])  # device="auto"
        alone.predict(np.zeros((1, 4), dtype=np.float32), deterministic=True)
        report(out_dir, "user_vec_envs", lone_load_device=str(alone.device))
    world.Barrier()

    # None: SB3's default, forkserver where available (Linux), so forkserver itself only where it is not the default.
    defaults_to_forkserver = "forkserver" in multiprocessing.get_all_start_methods()
    runs = []
    for start_method in (None, "spawn") if defaults_to_forkserver else (None, "forkserver", "spawn"):
        vec_env_kwargs = {} if start_method is None else {"start_method": start_method}
        env = make_vec_env("CartPole-v1", n_envs=2, vec_env_cls=SubprocVecEnv, vec_env_kwargs=vec_env_kwargs, seed=0)
        model = ParallelDQN("MlpPolicy", env, learning_starts=100, policy_kwargs={"net_arch": [16]}, seed=0)
        model.learn(300)
        runs.append(
            {
                "start_method": start_method,
                "process_class": type(env.processes[0]).__name__,
                "checksum": module_checksum(model.policy),
                "num_timesteps": model.num_timesteps,
                "n_updates": model._n_updates,
            }
        )
        env.close()
        report(out_dir, "user_vec_envs", subproc_runs=runs)
    report(out_dir, "user_vec_envs", devices=devices(n_gpus=2))
