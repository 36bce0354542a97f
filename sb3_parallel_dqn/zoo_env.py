"""Turn a zoo hyperparameter entry into model keyword arguments and the envs it describes."""

from __future__ import annotations

import dataclasses
from typing import Any

from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecFrameStack

from sb3_parallel_dqn.env_util import make_parallel_vec_env
from sb3_parallel_dqn.hyperparams import ConfigError


@dataclasses.dataclass
class EnvSettings:
    """The entries of a zoo config that describe the run and its envs rather than the model."""

    n_timesteps: int | None = None
    n_envs: int = 1
    policy: str = "MlpPolicy"
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    vec_env: str | None = None
    frame_stack: int = 0


# Zoo keys this package can read but cannot apply yet: refuse them rather than silently train something else.
_NOT_SUPPORTED_YET = ("env_wrapper", "normalize", "vec_env_wrapper", "callback")


def split_hyperparams(hyperparams: dict[str, Any]) -> tuple[dict[str, Any], EnvSettings]:
    """
    Split a converted entry (from :func:`sb3_parallel_dqn.hyperparams.load_hyperparams`) into the keyword
    arguments of ``ParallelDQN`` and the :class:`EnvSettings` of the run.
    """
    model_kwargs = dict(hyperparams)
    for key in _NOT_SUPPORTED_YET:
        if model_kwargs.get(key) not in (None, False, [], {}):
            raise ConfigError(f"{key!r} is not supported by sb3_parallel_dqn's scripts yet", key=key)
        model_kwargs.pop(key, None)
    settings = EnvSettings(
        n_timesteps=model_kwargs.pop("n_timesteps", None),
        n_envs=model_kwargs.pop("n_envs", 1),
        policy=model_kwargs.pop("policy", "MlpPolicy"),
        env_kwargs=model_kwargs.pop("env_kwargs", None) or {},
        vec_env=model_kwargs.pop("vec_env", None),
        frame_stack=model_kwargs.pop("frame_stack", 0) or 0,
    )
    return model_kwargs, settings


def make_train_env(env_id: str, settings: EnvSettings, seed: int | None, monitor_dir: str | None = None) -> VecEnv:
    """This rank's training envs: ``settings.n_envs`` of them, rank-offset seeds and monitor files, frame stack."""
    env = make_parallel_vec_env(
        env_id,
        n_envs=settings.n_envs,
        seed=seed,
        monitor_dir=monitor_dir,
        env_kwargs=settings.env_kwargs,
        vec_env_cls=settings.vec_env,
    )
    return VecFrameStack(env, settings.frame_stack) if settings.frame_stack else env


def make_eval_env(env_id: str, settings: EnvSettings, seed: int | None) -> VecEnv:
    """One env in this process, wrapped as for training (Monitor, frame stack), for evaluation."""
    env = make_parallel_vec_env(env_id, n_envs=1, seed=seed, env_kwargs=settings.env_kwargs, vec_env_cls=DummyVecEnv)
    return VecFrameStack(env, settings.frame_stack) if settings.frame_stack else env
