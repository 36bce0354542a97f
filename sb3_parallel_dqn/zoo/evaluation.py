"""
What ``python -m sb3_parallel_dqn.evaluate`` does: find a saved model (a run of the log folder, or a file), check it,
load it (in full, or its weights only) and rebuild the env it was trained on, with its normalization statistics. Every
bad input raises one of :data:`BAD_INPUT_ERRORS`, which the command line reports as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import gymnasium as gym
from stable_baselines3.common.vec_env import VecEnv

from sb3_parallel_dqn.io.checkpoints import vecnormalize_path
from sb3_parallel_dqn.io.safe_load import ModelFileError, check_dqn_state_dict, read_policy_state_dict
from sb3_parallel_dqn.parallel_dqn import ParallelDQN
from sb3_parallel_dqn.validation import ConfigError
from sb3_parallel_dqn.zoo.envs import make_eval_env, named_classes, register_optional_envs, split_hyperparams
from sb3_parallel_dqn.zoo.hyperparams import DEFAULT_CONF_FILE, load_hyperparams
from sb3_parallel_dqn.zoo.run_folder import find_run_dir, model_path, saved_config_path
from sb3_parallel_dqn.zoo.weights import load_weights_only_from_config


def locate(args: argparse.Namespace) -> tuple[Path, Path]:
    """The model file and the config file to rebuild its env from."""
    if args.model is not None:
        path = Path(args.model)
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
    else:
        run_dir = find_run_dir(args.folder, args.env, args.exp_id, args.algo)
        path = model_path(run_dir, args.env, args.load_best, args.load_checkpoint, args.load_last_checkpoint)
    saved = saved_config_path(path.parent, args.env)
    if args.conf_file is not None:
        return path, Path(args.conf_file)
    return path, saved if saved.is_file() else DEFAULT_CONF_FILE


class BadInputError(ValueError):
    """An input that cannot be evaluated, with a message for the user (main prints it on one line, exit code 2)."""


# Every failure caused by the input rather than by this script: main() reports each as one line with exit code 2.
BAD_INPUT_ERRORS = (BadInputError, ConfigError, FileNotFoundError, ModelFileError, gym.error.Error)


def prepare(args: argparse.Namespace, seed: int) -> tuple[ParallelDQN, VecEnv, str]:
    """
    Check the inputs, load the model and build its env seeded with ``seed``; return them with a line saying what was
    loaded. Every bad input raises one of :data:`BAD_INPUT_ERRORS`.
    """
    register_optional_envs(args.env)
    try:
        gym.spec(args.env)
    except gym.error.Error as error:
        raise BadInputError(f"--env {args.env}: {error}") from None
    path, conf_file = locate(args)
    hyperparams, _ = load_hyperparams(args.env, conf_file)
    stats = vecnormalize_path(path, args.env)
    if args.weights_only:
        # No code that came with the model runs: not a config found next to it that names modules to import, and
        # no module from its folder or from the working directory (first on sys.path under python -m).
        named = named_classes(hyperparams)
        if named and args.conf_file is None and conf_file != DEFAULT_CONF_FILE:
            raise BadInputError(
                f"--weights-only: {conf_file}, found next to the model, names code to import ({', '.join(named)}), "
                "and --weights-only runs no code that came with the model: read that config, and pass the one you "
                "trust with -conf"
            )
        refused = (path.resolve().parent, Path.cwd())
        _, settings = split_hyperparams(hyperparams, refuse_imports_from=refused)
        if settings.normalize_kwargs is not None:
            raise BadInputError(
                f"--weights-only: {args.env} is normalized, and its statistics ({stats.name}) are a pickle, which "
                "--weights-only does not load; evaluate without --weights-only only if you trust the run folder"
            )
        try:
            model, env = load_weights_only_from_config(
                path, args.env, conf_file, seed=seed, device=args.device, refuse_imports_from=refused
            )
        except ModelFileError as error:
            # The architecture is the config's: say which config, since that is what the weights must fit.
            raise ModelFileError(f"{error} (policy and policy_kwargs from {conf_file})") from None
        return model, env, f"Loaded {path} (weights only), architecture and env settings from {conf_file}"

    # A truncated or damaged zip, or another algorithm's, fails here, clearly, before any env is built and before
    # anything is unpickled (this reads policy.pth alone, tensors only).
    # A file loaded in full is trusted (its data is unpickled next), so its size is not bounded here.
    check_dqn_state_dict(read_policy_state_dict(path, max_bytes=sys.maxsize), str(path))
    _, settings = split_hyperparams(hyperparams)
    try:
        env = make_eval_env(args.env, settings, seed=seed, vecnormalize_path=stats if stats.is_file() else None)
    except (pickle.UnpicklingError, EOFError) as error:
        raise BadInputError(f"{stats}: not readable normalization statistics ({error})") from None
    try:
        model = load_model(path, args.env, env, args.device)
    except BaseException:
        env.close()
        raise
    return model, env, f"Loaded {path} ({model.num_timesteps} training steps), env settings from {conf_file}"


def load_model(path: Path, env_id: str, env: VecEnv, device: str) -> ParallelDQN:
    """``ParallelDQN.load`` (it unpickles: trusted files only), with its failures turned into one clear error."""
    try:
        # Without env: SB3 would check the spaces itself, but its message does not say which is the model's.
        model = ParallelDQN.load(path, device=device)
    # What SB3's load raises for a zip whose members are damaged or missing (the structure was checked before):
    # ValueError (bad JSON, spaces, kwargs), KeyError and AssertionError (missing entries), RuntimeError (state
    # dicts), and the unpickler's errors.
    except (ValueError, KeyError, AssertionError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise ModelFileError(f"{path}: cannot load the model ({type(error).__name__}: {error})") from None
    for kind, model_space, env_space in (
        ("observation", model.observation_space, env.observation_space),
        ("action", model.action_space, env.action_space),
    ):
        if model_space != env_space:
            raise BadInputError(
                f"{path} does not fit {env_id}: the model's {kind} space is {model_space}, the env's is {env_space}; "
                "evaluate it with the env it was trained on (--env)"
            )
    return model
