"""Build each rank's vectorised environments: seeds and monitor files that never collide across ranks."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import gymnasium as gym
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from sb3_parallel_dqn import compat
from sb3_parallel_dqn.distributed import comm, lockstep, mesh
from sb3_parallel_dqn.envs.registry import register_env_packages
from sb3_parallel_dqn.envs.subproc import ParallelSubprocVecEnv

VEC_ENV_CLASSES: dict[str, type[DummyVecEnv | SubprocVecEnv]] = {"dummy": DummyVecEnv, "subproc": ParallelSubprocVecEnv}


def resolve_vec_env_cls(
    vec_env_cls: str | type[DummyVecEnv | SubprocVecEnv] | None, n_envs: int
) -> type[DummyVecEnv | SubprocVecEnv]:
    """
    ``None`` picks a ``SubprocVecEnv`` for several envs and a ``DummyVecEnv`` for one; strings name either.

    Every ``SubprocVecEnv`` is a :class:`~sb3_parallel_dqn.envs.ParallelSubprocVecEnv`, SB3's class passed
    explicitly included: it behaves the same but names the env worker that died (subclasses are left alone).
    """
    if vec_env_cls is None:
        return ParallelSubprocVecEnv if n_envs > 1 else DummyVecEnv
    if vec_env_cls is SubprocVecEnv:
        return ParallelSubprocVecEnv
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
    replica: int | None = None,
    model_parallel_size: int = 1,
) -> VecEnv:
    """
    SB3's ``make_vec_env`` for this rank's share of the job.

    Env ``i`` of rank ``r`` gets the global index ``r * n_envs + i``: its seed (at the first reset) and the seed of
    its action space are ``seed + r * n_envs + i``, and its monitor file is ``<monitor_dir>/<r>.<i>.monitor.csv``
    (``0.0.monitor.csv``, ``0.1.monitor.csv``, ``1.0.monitor.csv``, ...), so nothing collides across ranks. Apart
    from the monitor file names, one process gives exactly ``make_vec_env``'s envs: same seeds, observations and
    action samples. With model parallelism ``r`` counts replicas, not ranks: the ranks of a replica step identical
    envs (see :mod:`~sb3_parallel_dqn.engine.model_parallel`), and only the first of them writes monitor files.

    Every start method (``fork``, ``forkserver``, ``spawn``) works under ``mpirun``, as with SB3's own
    ``SubprocVecEnv``/``make_vec_env``: MPI is initialised (by ``comm.rank()``, below) before any worker starts,
    and the launcher's variables are gone from the environment from then on (see
    :func:`sb3_parallel_dqn.distributed.comm.hide_launcher_env`).

    :param env_id: the env ID or a callable returning an env
    :param n_envs: number of environments of this rank (must be the same on every rank)
    :param seed: the global seed; None leaves the envs unseeded
    :param monitor_dir: folder of the monitor files; None writes none (the envs are still wrapped in ``Monitor``)
    :param wrapper_class: applied to each env after ``Monitor``; it is sent to ``SubprocVecEnv`` workers, so it must
        be picklable (with cloudpickle) under ``spawn``/``forkserver``
    :param vec_env_cls: ``"subproc"``, ``"dummy"``, a ``VecEnv`` class, or None for ``SubprocVecEnv`` when
        ``n_envs > 1`` and ``DummyVecEnv`` otherwise; ``"subproc"`` and SB3's ``SubprocVecEnv`` give a
        :class:`~sb3_parallel_dqn.envs.ParallelSubprocVecEnv`, whose errors name the env worker that died
    :param vec_env_kwargs: keyword arguments for the ``VecEnv`` class, e.g. ``{"start_method": "spawn"}``
    :param replica: seed the envs as this replica's (default: this rank's), e.g. 0 for evaluation envs that every rank
        must see alike
    :param model_parallel_size: the ``model_parallel_size`` of the model that will step these envs: its replicas, not
        its ranks, count in the seeds (collective the first time a size > 1 is used in the process: call it on every
        rank)
    The other parameters are those of ``stable_baselines3.common.env_util.make_vec_env``.
    """
    env_kwargs = env_kwargs or {}
    vec_env_kwargs = vec_env_kwargs or {}
    monitor_kwargs = monitor_kwargs or {}
    wrapper_kwargs = wrapper_kwargs or {}
    comm.rank()  # under a launcher: MPI initialised (and its variables hidden) before any worker starts
    grid = mesh.get(model_parallel_size)
    rank = grid.data_rank if replica is None else replica
    # Plain values only in the closure below: it is pickled to SubprocVecEnv workers, and the mesh holds communicators.
    writes_monitor = monitor_dir is not None and grid.model_rank == 0

    # SB3 2.9's make_vec_env.make_env, except for the monitor file name: make_vec_env names it by one integer
    # (start_index + i), which cannot say which rank wrote it. Keep the rest diffable against SB3.
    def make_env(index: int) -> Callable[[], gym.Env]:

        def _init() -> gym.Env:
            if isinstance(env_id, str):
                register_env_packages(env_id)  # in this process: a spawn/forkserver worker starts without them
                # if the render mode was not specified, we set it to `rgb_array` as default.
                kwargs = {"render_mode": "rgb_array"}
                kwargs.update(env_kwargs)
                try:
                    env = gym.make(env_id, **kwargs)  # type: ignore[arg-type]
                except TypeError:
                    env = gym.make(env_id, **env_kwargs)
            else:
                env = env_id(**env_kwargs)
                # Patch to support gym 0.21/0.26 and gymnasium
                env = compat.patch_env(env)

            if seed is not None:
                # Note: here we only seed the action space
                # We will seed the env at the next reset
                env.action_space.seed(lockstep.env_seed(seed, n_envs, index, rank))
            # Monitor appends ".monitor.csv" to the path.
            monitor_path = os.path.join(monitor_dir, f"{rank}.{index}") if writes_monitor and monitor_dir is not None else None
            if monitor_path is not None and monitor_dir is not None:
                os.makedirs(monitor_dir, exist_ok=True)
            env = Monitor(env, filename=monitor_path, **monitor_kwargs)
            if wrapper_class is not None:
                env = wrapper_class(env, **wrapper_kwargs)
            return env

        return _init

    vec_env_class = resolve_vec_env_cls(vec_env_cls, n_envs)
    if issubclass(vec_env_class, ParallelSubprocVecEnv):
        vec_env_kwargs = {"first_global_index": lockstep.global_env_index(n_envs, 0, rank), **vec_env_kwargs}
    vec_env = vec_env_class([make_env(i) for i in range(n_envs)], **vec_env_kwargs)
    # VecEnv.seed(s) seeds env i with s + i at the next reset. Like make_vec_env, also call it without a seed: it
    # then draws one from numpy's global generator, and skipping that draw would change what follows it.
    vec_env.seed(None if seed is None else lockstep.env_seed(seed, n_envs, 0, rank))
    return vec_env


def build_env(
    env: str,
    n_envs: int,
    env_kwargs: dict[str, Any] | None,
    vec_env_cls: str | type[DummyVecEnv | SubprocVecEnv] | None,
    vec_env_kwargs: dict[str, Any] | None,
    model_parallel_size: int = 1,
) -> VecEnv | str:
    """
    What ``ParallelDQN`` trains on when given an env id: ``n_envs`` envs of this rank from
    :func:`make_parallel_vec_env`, or the id itself when SB3 would build the same single env from it.
    """
    register_env_packages(env)  # SB3's gym.make of the id runs in this process
    if n_envs > 1 or vec_env_cls is not None or env_kwargs is not None:
        return make_parallel_vec_env(
            env,
            n_envs=n_envs,
            env_kwargs=env_kwargs,
            vec_env_cls=vec_env_cls,
            vec_env_kwargs=vec_env_kwargs,
            model_parallel_size=model_parallel_size,
        )
    return env
