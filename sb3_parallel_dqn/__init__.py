"""Stable-Baselines3 DQN with parallel rollouts and MPI data-parallel gradient updates.

Importing the package does not initialise MPI; that happens on first use, and only under an MPI launcher.
"""

import os

from sb3_parallel_dqn import mpi_tools
from sb3_parallel_dqn.env_util import make_parallel_vec_env
from sb3_parallel_dqn.interrupt import stop_on_signals
from sb3_parallel_dqn.mpi_pytorch import WeightsDivergedError
from sb3_parallel_dqn.parallel_dqn import LockstepError, NonFiniteError, ParallelDQN, UnsupportedSpaceError
from sb3_parallel_dqn.policies import CnnPolicy, DuelingQNetwork, MlpPolicy, MultiInputPolicy
from sb3_parallel_dqn.prioritized_replay import PrioritizedReplayBuffer
from sb3_parallel_dqn.safe_load import ModelFileError, UnsafeModelFileError, load_weights_only
from sb3_parallel_dqn.vec_env import EnvWorkerError, ParallelSubprocVecEnv

# If the script initialised MPI already (`from mpi4py import MPI` first), env workers started from now on, by anyone,
# must not inherit the launcher's variables (see mpi_tools.hide_launcher_env); otherwise comm() hides them when it
# initialises MPI.
mpi_tools.hide_launcher_env_if_initialized()

# Read version from file
version_file = os.path.join(os.path.dirname(__file__), "version.txt")
with open(version_file) as file_handler:
    __version__ = file_handler.read().strip()

__all__ = [
    "CnnPolicy",
    "DuelingQNetwork",
    "EnvWorkerError",
    "LockstepError",
    "MlpPolicy",
    "ModelFileError",
    "MultiInputPolicy",
    "NonFiniteError",
    "ParallelDQN",
    "ParallelSubprocVecEnv",
    "PrioritizedReplayBuffer",
    "UnsafeModelFileError",
    "UnsupportedSpaceError",
    "WeightsDivergedError",
    "load_weights_only",
    "make_parallel_vec_env",
    "stop_on_signals",
]
