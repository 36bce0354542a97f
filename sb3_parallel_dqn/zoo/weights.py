"""
Weights-only loading from a zoo config entry: the model and its evaluation env are built as ``train`` built them,
and only the file's tensors are read (see :mod:`sb3_parallel_dqn.io.safe_load`).
"""

from __future__ import annotations

import os
from typing import Any

import torch as th
from stable_baselines3.common.vec_env import VecEnv

from sb3_parallel_dqn.distributed import comm
from sb3_parallel_dqn.io.safe_load import build_with_weights, check_dqn_state_dict, read_policy_state_dict
from sb3_parallel_dqn.parallel_dqn import ParallelDQN
from sb3_parallel_dqn.validation import ConfigError
from sb3_parallel_dqn.zoo.envs import make_eval_env, split_hyperparams
from sb3_parallel_dqn.zoo.hyperparams import load_entry


def load_weights_only_from_config(
    path: str | os.PathLike[str],
    env_id: str,
    conf_file: str | os.PathLike[str] | None = None,
    *,
    seed: int | None = None,
    device: th.device | str = "cpu",
    overrides: dict[str, Any] | None = None,
    vecnormalize_path: str | os.PathLike[str] | None = None,
    refuse_imports_from: tuple[str | os.PathLike[str], ...] | None = None,
) -> tuple[ParallelDQN, VecEnv]:
    """
    Build the model and its evaluation env from a zoo config entry, as ``train`` built them, and load a model file's
    weights into the model, reading only ``policy.pth`` (see :func:`sb3_parallel_dqn.io.safe_load.load_weights_only`).

    The config is read by :func:`sb3_parallel_dqn.zoo.hyperparams.load_entry` (no ``eval``); its ``policy``,
    ``policy_kwargs``, ``env_kwargs`` and wrappers give the architecture and the env. A run folder's
    ``<env>/config.yml`` is the config of that run. Its ``env_wrapper``, ``vec_env_wrapper`` and ``callback`` keys
    import installed modules by name (see :mod:`sb3_parallel_dqn.zoo.envs`): read a config that came with an untrusted
    model before using it. No module is imported from the model's folder (``refuse_imports_from``), so that a
    ``helpers.py`` next to a downloaded model never runs.

    In one process the model is built whole (``model_parallel_size=1``, ``shard_optimizer=False``), whatever the
    entry says: a run trained split over several ranks saves its model whole, and evaluates in one process.

    :param path: the model file (``.zip``)
    :param env_id: the env id; its entry (else ``atari``, else ``default``) is used
    :param conf_file: the zoo-format YAML file; defaults to the package's ``zoo/configs/dqn.yml``
    :param seed: the seed of the evaluation env
    :param device: the torch device of the model
    :param overrides: hyperparameters that replace the entry's, as ``-params`` does
    :param vecnormalize_path: ``VecNormalize`` statistics for an entry with ``normalize``. That file is a pickle,
        which :meth:`VecNormalize.load` unpickles: pass it only when you trust it.
    :param refuse_imports_from: folders no class of the entry may be imported from; default: the model's folder
        (``python -m sb3_parallel_dqn.evaluate --weights-only`` adds the working directory)
    :return: the model and one evaluation env (``make_eval_env``); close the env when done
    :raises ConfigError: for a bad config, or an entry with ``normalize`` but no ``vecnormalize_path``: fresh
        statistics would silently feed the policy observations it was not trained on
    :raises FileNotFoundError: when ``path`` does not exist
    :raises ModelFileError: see :func:`sb3_parallel_dqn.io.safe_load.load_weights_only`
    """
    entry = load_entry(env_id, conf_file, overrides)
    refused = (os.path.dirname(os.path.abspath(path)),) if refuse_imports_from is None else refuse_imports_from
    model_kwargs, settings = split_hyperparams(entry.hyperparams, refuse_imports_from=refused)
    if comm.world_size() == 1:  # the whole model: a split one needs as many ranks as its parts
        model_kwargs.update(model_parallel_size=1, shard_optimizer=False)
    if settings.normalize_kwargs is not None and vecnormalize_path is None:
        raise ConfigError(
            "the entry normalizes observations, and its statistics (vecnormalize.pkl) are a pickle, which a "
            "weights-only load does not read; pass vecnormalize_path for a file you trust",
            file=entry.file,
            entry=entry.section,
            key="normalize",
        )
    state = read_policy_state_dict(path)  # a bad file fails before the env is built
    check_dqn_state_dict(state, os.fspath(path))
    env = make_eval_env(env_id, settings, seed=seed, vecnormalize_path=vecnormalize_path)
    policy_kwargs = model_kwargs.pop("policy_kwargs", None)
    try:
        model = build_with_weights(state, os.fspath(path), env, settings.policy, policy_kwargs, device, model_kwargs)
    except BaseException:
        env.close()
        raise
    return model, env
