"""Build each rank's vectorised environments: seeds and monitor files that never collide across ranks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from sb3_parallel_dqn import mpi_tools

VEC_ENV_CLASSES: dict[str, type[DummyVecEnv | SubprocVecEnv]] = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}


def resolve_vec_env_cls(
    vec_env_cls: str | type[DummyVecEnv | SubprocVecEnv] | None, n_envs: int
) -> type[DummyVecEnv | SubprocVecEnv]:
    """``None`` picks a ``SubprocVecEnv`` for several envs and a ``DummyVecEnv`` for one; strings name either."""
    if vec_env_cls is None:
        return SubprocVecEnv if n_envs > 1 else DummyVecEnv
    if isinstance(vec_env_cls, str):
        try:
            return VEC_ENV_CLASSES[vec_env_cls]
        except KeyError:
            raise ValueError(
                f"vec_env_cls must be one of {sorted(VEC_ENV_CLASSES)} or a VecEnv class, not {vec_env_cls!r}"
            ) from None
    return vec_env_cls


def make_parallel_vec_env(
    env_id: str | Callable[..., gym.Env],
    n_envs: int = 1,
    seed: int | None = None,
    monitor_dir: str | None = None,
    wrapper_class: Callable[[gym.Env], gym.Env] | None = None,
    env_kwargs: dict[str, Any] | None = None,
    vec_env_cls: str | type[DummyVecEnv | SubprocVecEnv] | None = None,
    vec_env_kwargs: dict[str, Any] | None = None,
    monitor_kwargs: dict[str, Any] | None = None,
    wrapper_kwargs: dict[str, Any] | None = None,
) -> VecEnv:
    """
    SB3's ``make_vec_env`` for this rank's share of the job.

    Env ``i`` of rank ``r`` gets the global index ``r * n_envs + i``: its seed is ``seed + r * n_envs + i`` and its
    monitor file ``<monitor_dir>/<r * n_envs + i>.monitor.csv``, so nothing collides across ranks. With one process
    this is exactly ``make_vec_env``.

    Worker processes are started without the MPI launcher's environment variables, which makes every start method
    (``fork``, ``forkserver``, ``spawn``) work under ``mpirun`` even when the main script imports ``mpi4py`` at top
    level (see :func:`sb3_parallel_dqn.mpi_tools.launcher_env_removed`). Use this function, not
    ``SubprocVecEnv(...)`` directly, in scripts launched by ``mpirun``.

    :param env_id: the env ID or a callable returning an env
    :param n_envs: number of environments of this rank (must be the same on every rank)
    :param seed: the global seed; None leaves the envs unseeded
    :param vec_env_cls: ``"subproc"``, ``"dummy"``, a ``VecEnv`` class, or None for ``SubprocVecEnv`` when
        ``n_envs > 1`` and ``DummyVecEnv`` otherwise
    :param vec_env_kwargs: keyword arguments for the ``VecEnv`` class, e.g. ``{"start_method": "spawn"}``
    The other parameters are those of ``stable_baselines3.common.env_util.make_vec_env``.
    """
    first_index = mpi_tools.rank() * n_envs
    with mpi_tools.launcher_env_removed():
        vec_env = make_vec_env(
            env_id,
            n_envs=n_envs,
            start_index=first_index,
            monitor_dir=monitor_dir,
            wrapper_class=wrapper_class,
            env_kwargs=env_kwargs,
            vec_env_cls=resolve_vec_env_cls(vec_env_cls, n_envs),
            vec_env_kwargs=vec_env_kwargs,
            monitor_kwargs=monitor_kwargs,
            wrapper_kwargs=wrapper_kwargs,
        )
    if seed is not None:
        # VecEnv.seed(s) seeds env i with s + i at the next reset; make_vec_env would not add the rank's offset.
        vec_env.seed(seed + first_index)
    return vec_env
