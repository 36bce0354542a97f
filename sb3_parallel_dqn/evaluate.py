"""
Evaluate a trained agent (the zoo's ``enjoy``, without rendering) in a plain process: no MPI needed.

    python -m sb3_parallel_dqn.evaluate --env CartPole-v1 -f logs          # latest run, final model
    python -m sb3_parallel_dqn.evaluate --env CartPole-v1 -f logs --exp-id 3 --load-best --episodes 50
    python -m sb3_parallel_dqn.evaluate --env PongNoFrameskip-v4 --load-checkpoint 100000
    python -m sb3_parallel_dqn.evaluate --env CartPole-v1 --model path/to/model.zip   # any ParallelDQN or SB3 DQN zip
    python -m sb3_parallel_dqn.evaluate --env CartPole-v1 --model downloaded.zip --weights-only -conf my_dqn.yml

(also ``sb3-parallel-dqn evaluate ...`` and ``python scripts/evaluate.py ...``)

The envs are rebuilt as the run trained them (env kwargs, wrappers, frame stack, normalization statistics) from the
run's ``<env>/config.yml`` and ``<env>/vecnormalize.pkl``; for a ``--model`` outside a run folder, from the config
entry of the env in ``-conf``. Actions are greedy unless ``--stochastic``.

Loading a model unpickles objects stored in its zip, which can run code: only evaluate files you trust. For any other
file use ``--weights-only``: the model is built from the config (``policy``, ``policy_kwargs``) and only its tensors
are read from the zip (``policy.pth``, with ``torch.load(weights_only=True)``; see :mod:`sb3_parallel_dqn.io.safe_load`).
``--weights-only`` refuses configs with ``normalize``, whose statistics file is a pickle too. It runs no code that came
with the model: a config found next to the model that names modules to import (``env_wrapper``, ``vec_env_wrapper``,
``callback``) is refused (pass the config you trust with ``-conf``), and no named module is imported from the model's
folder or the working directory (first on ``sys.path`` under ``python -m``). The config is parsed without ``eval``,
but those keys import installed modules: read a config that came with an untrusted model before using it.

A bad input (unknown env, missing, truncated or corrupt model file, a model of another algorithm, a model trained on
other spaces than the env's, a bad config) ends with one ``error:`` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_parallel_dqn.zoo import ALGO
from sb3_parallel_dqn.zoo.evaluation import BAD_INPUT_ERRORS, prepare


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
