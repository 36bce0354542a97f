"""
Stable-Baselines3 DQN with parallel rollouts and MPI data-parallel gradient updates.

In a plain process, importing the package never touches MPI. Under an MPI launcher (``mpirun``, ``srun``) it
initialises MPI at once and takes the launcher's variables out of the environment, so that the env workers that a
script starts afterwards (its own ``SubprocVecEnv`` too, with any start method) never try to join the job: see
:func:`sb3_parallel_dqn.distributed.comm.init_if_launched`. The public names below are imported when first used
(PEP 562), so that the command lines that need neither torch nor SB3 (``python -m sb3_parallel_dqn.plot``) start fast.
"""

import importlib
import os
from typing import TYPE_CHECKING, Any

from sb3_parallel_dqn.distributed import comm

# Env workers started from now on, by anyone, must not inherit the launcher's variables (see comm.init_if_launched).
comm.init_if_launched()

if TYPE_CHECKING:
    from sb3_parallel_dqn.buffers.frame import FrameReplayBuffer, PrioritizedFrameReplayBuffer
    from sb3_parallel_dqn.buffers.prioritized import PrioritizedReplayBuffer
    from sb3_parallel_dqn.callbacks import ParallelEvalCallback
    from sb3_parallel_dqn.distributed.gradients import WeightsDivergedError
    from sb3_parallel_dqn.distributed.lockstep import LockstepError
    from sb3_parallel_dqn.envs import EnvWorkerError, ParallelSubprocVecEnv, make_parallel_vec_env
    from sb3_parallel_dqn.interrupt import stop_on_signals
    from sb3_parallel_dqn.io.safe_load import ModelFileError, UnsafeModelFileError, load_weights_only
    from sb3_parallel_dqn.losses import NonFiniteError
    from sb3_parallel_dqn.parallel_dqn import ParallelDQN
    from sb3_parallel_dqn.policies import CnnPolicy, DuelingQNetwork, MinAtarCNN, MlpPolicy, MultiInputPolicy
    from sb3_parallel_dqn.validation import ConfigError, UnsupportedSpaceError

# Public name -> the module that defines it.
_PUBLIC = {
    "CnnPolicy": "policies",
    "ConfigError": "validation",
    "DuelingQNetwork": "policies",
    "EnvWorkerError": "envs",
    "FrameReplayBuffer": "buffers.frame",
    "LockstepError": "distributed.lockstep",
    "MinAtarCNN": "policies",
    "MlpPolicy": "policies",
    "ModelFileError": "io.safe_load",
    "MultiInputPolicy": "policies",
    "NonFiniteError": "losses",
    "ParallelDQN": "parallel_dqn",
    "ParallelEvalCallback": "callbacks",
    "ParallelSubprocVecEnv": "envs",
    "PrioritizedFrameReplayBuffer": "buffers.frame",
    "PrioritizedReplayBuffer": "buffers.prioritized",
    "UnsafeModelFileError": "io.safe_load",
    "UnsupportedSpaceError": "validation",
    "WeightsDivergedError": "distributed.gradients",
    "load_weights_only": "io.safe_load",
    "make_parallel_vec_env": "envs",
    "stop_on_signals": "interrupt",
}

__all__ = [
    "CnnPolicy",
    "ConfigError",
    "DuelingQNetwork",
    "EnvWorkerError",
    "FrameReplayBuffer",
    "LockstepError",
    "MinAtarCNN",
    "MlpPolicy",
    "ModelFileError",
    "MultiInputPolicy",
    "NonFiniteError",
    "ParallelDQN",
    "ParallelEvalCallback",
    "ParallelSubprocVecEnv",
    "PrioritizedFrameReplayBuffer",
    "PrioritizedReplayBuffer",
    "UnsafeModelFileError",
    "UnsupportedSpaceError",
    "WeightsDivergedError",
    "load_weights_only",
    "make_parallel_vec_env",
    "stop_on_signals",
]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    globals()[name] = value  # once imported, an ordinary module attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


# Read version from file
version_file = os.path.join(os.path.dirname(__file__), "version.txt")
with open(version_file) as file_handler:
    __version__ = file_handler.read().strip()
