"""
Each rank's envs: :func:`make_parallel_vec_env` (SB3's ``make_vec_env`` with seeds and monitor files that never
collide across ranks), the one way training envs are built, and :class:`ParallelSubprocVecEnv` (SB3's
``SubprocVecEnv`` that names the env worker that died).
"""

from sb3_parallel_dqn.envs.make import build_env, make_parallel_vec_env, resolve_vec_env_cls
from sb3_parallel_dqn.envs.registry import register_env_packages
from sb3_parallel_dqn.envs.subproc import EnvWorkerError, ParallelSubprocVecEnv

__all__ = [
    "EnvWorkerError",
    "ParallelSubprocVecEnv",
    "build_env",
    "make_parallel_vec_env",
    "register_env_packages",
    "resolve_vec_env_cls",
]
