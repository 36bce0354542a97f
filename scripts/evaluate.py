"""
Evaluate a trained agent (the zoo's ``enjoy``, without rendering) in a plain process: no MPI needed.

    python scripts/evaluate.py --env CartPole-v1 -f logs                      # latest run, final model
    python scripts/evaluate.py --env CartPole-v1 -f logs --exp-id 3 --load-best --episodes 50
    python scripts/evaluate.py --env PongNoFrameskip-v4 --load-checkpoint 100000
    python scripts/evaluate.py --env CartPole-v1 --model path/to/model.zip    # any ParallelDQN or SB3 DQN zip

The envs are rebuilt as the run trained them (env kwargs, wrappers, frame stack, normalization statistics) from the
run's ``<env>/config.yml`` and ``<env>/vecnormalize.pkl``; for a ``--model`` outside a run folder, from the config
entry of the env in ``-conf``. Actions are greedy unless ``--stochastic``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.checkpoints import vecnormalize_path
from sb3_parallel_dqn.hyperparams import DEFAULT_CONF_FILE, ConfigError, load_hyperparams
from sb3_parallel_dqn.run_folder import ALGO, find_run_dir, model_path, saved_config_path
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    register_optional_envs()
    try:
        path, conf_file = locate(args)
        hyperparams, _ = load_hyperparams(args.env, conf_file)
        _, settings = split_hyperparams(hyperparams)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # Fresh episodes unless told otherwise; print the seed so that a run can be repeated.
    seed = args.seed if args.seed is not None else int(np.random.default_rng().integers(2**31))
    stats = vecnormalize_path(path, args.env)
    env = make_eval_env(args.env, settings, seed=seed, vecnormalize_path=stats if stats.is_file() else None)
    model = ParallelDQN.load(path, env=env, device=args.device)
    print(f"Loaded {path} ({model.num_timesteps} training steps), env settings from {conf_file}")
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
