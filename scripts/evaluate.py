"""
Evaluate a trained agent (the zoo's ``enjoy``, without rendering) in a plain process: no MPI needed.

    python scripts/evaluate.py --env CartPole-v1 -f logs                      # latest run, final model
    python scripts/evaluate.py --env CartPole-v1 -f logs --exp-id 3 --load-best --episodes 50
    python scripts/evaluate.py --env PongNoFrameskip-v4 --load-checkpoint 100000
    python scripts/evaluate.py --env CartPole-v1 --model path/to/model.zip    # any ParallelDQN or SB3 DQN zip
    python scripts/evaluate.py --env CartPole-v1 --model downloaded.zip --weights-only -conf my_dqn.yml

The envs are rebuilt as the run trained them (env kwargs, wrappers, frame stack, normalization statistics) from the
run's ``<env>/config.yml`` and ``<env>/vecnormalize.pkl``; for a ``--model`` outside a run folder, from the config
entry of the env in ``-conf``. Actions are greedy unless ``--stochastic``.

Loading a model unpickles objects stored in its zip, which can run code: only evaluate files you trust. For any other
file use ``--weights-only``: the model is built from the config (``policy``, ``policy_kwargs``) and only its tensors
are read from the zip (``policy.pth``, with ``torch.load(weights_only=True)``; see :mod:`sb3_parallel_dqn.safe_load`).
``--weights-only`` refuses configs with ``normalize``, whose statistics file is a pickle too. The config is parsed
without ``eval``, but its ``env_wrapper``, ``vec_env_wrapper`` and ``callback`` keys import installed modules: read a
config that came with an untrusted model before using it.

A bad input (unknown env, missing, truncated or corrupt model file, a model trained on other spaces than the env's,
a bad config) ends with one ``error:`` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.checkpoints import vecnormalize_path
from sb3_parallel_dqn.hyperparams import DEFAULT_CONF_FILE, ConfigError, load_hyperparams
from sb3_parallel_dqn.run_folder import ALGO, find_run_dir, model_path, saved_config_path
from sb3_parallel_dqn.safe_load import ModelFileError, load_weights_only_from_config, read_policy_state_dict
from sb3_parallel_dqn.zoo_env import make_eval_env, register_optional_envs, split_hyperparams


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-v1", help="environment ID")
    parser.add_argument("-f", "--folder", default="logs", help="log folder of the runs")
    parser.add_argument("--algo", default=ALGO, help="algorithm folder inside the log folder")
    parser.add_argument("--exp-id", type=int, default=0, help="run id (0: the latest run)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--load-best", action="store_true", help="load best_model.zip (kept by periodic evaluation)")
    which.add_argument("--load-checkpoint", type=int, default=None, metavar="N", help="load rl_model_<N>_steps.zip")
    which.add_argument("--load-last-checkpoint", action="store_true", help="load the last checkpoint")
    which.add_argument("--model", default=None, help="path to a saved .zip (instead of a run of the log folder)")
    parser.add_argument("-conf", "--conf-file", default=None, help="zoo-style config (default: the run's own)")
    parser.add_argument("-n", "--episodes", type=int, default=20, help="number of evaluation episodes")
    parser.add_argument("--seed", type=int, default=None, help="seed of the evaluation env (default: fresh)")
    greedy = parser.add_mutually_exclusive_group()
    greedy.add_argument("--deterministic", dest="deterministic", action="store_true", default=True, help="greedy (default)")
    greedy.add_argument("--stochastic", dest="deterministic", action="store_false", help="epsilon-greedy actions")
    parser.add_argument("--device", default="cpu", help="PyTorch device")
    parser.add_argument(
        "--weights-only", action="store_true",
        help="build the model from the config and read only its tensors from the zip (for files you do not trust)",
    )  # fmt: skip
    return parser.parse_args(argv)


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
    register_optional_envs()
    try:
        gym.spec(args.env)
    except gym.error.Error as error:
        raise BadInputError(f"--env {args.env}: {error}") from None
    path, conf_file = locate(args)
    hyperparams, _ = load_hyperparams(args.env, conf_file)
    _, settings = split_hyperparams(hyperparams)
    stats = vecnormalize_path(path, args.env)
    if args.weights_only:
        if settings.normalize_kwargs is not None:
            raise BadInputError(
                f"--weights-only: {args.env} is normalized, and its statistics ({stats.name}) are a pickle, which "
                "--weights-only does not load; evaluate without --weights-only only if you trust the run folder"
            )
        try:
            model, env = load_weights_only_from_config(path, args.env, conf_file, seed=seed, device=args.device)
        except ModelFileError as error:
            # The architecture is the config's: say which config, since that is what the weights must fit.
            raise ModelFileError(f"{error} (policy and policy_kwargs from {conf_file})") from None
        return model, env, f"Loaded {path} (weights only), architecture and env settings from {conf_file}"

    # A truncated or damaged zip fails here, clearly, before any env is built (this reads policy.pth alone).
    read_policy_state_dict(path)
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Fresh episodes unless told otherwise; print the seed so that a run can be repeated.
    seed = args.seed if args.seed is not None else int(np.random.default_rng().integers(2**31))
    try:
        model, env, loaded = prepare(args, seed)
    except BAD_INPUT_ERRORS as error:
        # One line, whatever the message holds (a space's repr can span lines), and no traceback.
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(loaded)
    returns, lengths = evaluate_policy(
        model, env, n_eval_episodes=args.episodes, deterministic=args.deterministic, return_episode_rewards=True
    )
    env.close()
    assert isinstance(returns, list) and isinstance(lengths, list)  # return_episode_rewards=True
    mean, std = np.mean(returns), np.std(returns)
    print(f"{args.env}: mean return {mean:.2f} +/- {std:.2f} over {args.episodes} episodes (seed {seed})")
    print("returns: " + " ".join(f"{r:g}" for r in returns))
    print(f"mean episode length: {np.mean(lengths):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
