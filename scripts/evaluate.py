"""
Evaluate a saved model (from any ParallelDQN or SB3 DQN run) in a plain process: no MPI needed.

    python scripts/evaluate.py --model logs/parallel_dqn/CartPole-v1_1/CartPole-v1.zip --env CartPole-v1 --episodes 20

Env settings that change what the model sees (``env_kwargs``, ``frame_stack``) come from the config entry of the env.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.hyperparams import DEFAULT_CONF_FILE, ConfigError, load_hyperparams
from sb3_parallel_dqn.zoo_env import make_eval_env, split_hyperparams


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="path to the saved .zip")
    parser.add_argument("--env", default="CartPole-v1", help="environment ID")
    parser.add_argument("-conf", "--conf-file", default=str(DEFAULT_CONF_FILE), help="zoo-style YAML config")
    parser.add_argument("--episodes", type=int, default=20, help="number of evaluation episodes")
    parser.add_argument("--seed", type=int, default=None, help="seed of the evaluation env (default: fresh)")
    parser.add_argument("--stochastic", action="store_true", help="epsilon-greedy actions instead of greedy ones")
    parser.add_argument("--device", default="cpu", help="PyTorch device")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        hyperparams, _ = load_hyperparams(args.env, args.conf_file)
        _, settings = split_hyperparams(hyperparams)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # Fresh episodes unless told otherwise; print the seed so that a run can be repeated.
    seed = args.seed if args.seed is not None else int(np.random.default_rng().integers(2**31))
    env = make_eval_env(args.env, settings, seed=seed)
    model = ParallelDQN.load(args.model, env=env, device=args.device)
    returns, lengths = evaluate_policy(
        model, env, n_eval_episodes=args.episodes, deterministic=not args.stochastic, return_episode_rewards=True
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
