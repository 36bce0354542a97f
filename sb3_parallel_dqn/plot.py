"""
Plot the learning curves of one or more runs to a PNG: return vs global timesteps and return vs wall-clock time.

    python -m sb3_parallel_dqn.plot logs/parallel_dqn/CartPole-v1_1 logs/parallel_dqn/CartPole-v1_2 -o cartpole.png
    python -m sb3_parallel_dqn.plot -f logs --env CartPole-v1                  # every run logs/parallel_dqn/CartPole-v1_<id>
    python -m sb3_parallel_dqn.plot -f logs --env CartPole-v1 --exp-id 1 3 --smooth 20
    python -m sb3_parallel_dqn.plot -f logs --algo dqn --env CartPole-v1 logs/parallel_dqn/CartPole-v1_1   # next to SB3 DQN

(also ``sb3-parallel-dqn plot ...`` and ``python scripts/plot.py ...``). How the curves are made:
:mod:`sb3_parallel_dqn.zoo.plotting`.
"""

from __future__ import annotations

import argparse
import sys

from sb3_parallel_dqn.zoo.plotting import DEFAULT_ALGO, DEFAULT_OUTPUT, RunError, plot


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="run folders (each with *.monitor.csv and/or evaluations.npz)")
    parser.add_argument("-f", "--log-folder", type=str, default="logs", help="zoo log folder, used with --env")
    parser.add_argument("--algo", type=str, default=DEFAULT_ALGO, help="algo folder under the log folder, used with --env")
    parser.add_argument("--env", type=str, default=None, help="plot the runs <log-folder>/<algo>/<env>_<id>")
    parser.add_argument("--exp-id", type=int, nargs="+", default=None, help="run ids to plot (default: all; 0: latest)")
    parser.add_argument("--labels", type=str, nargs="+", default=None, help="legend labels, one per run")
    parser.add_argument("-o", "--output", type=str, default=DEFAULT_OUTPUT, help="PNG file to write")
    parser.add_argument("--smooth", type=int, default=10, help="moving-average window over training episodes (1: raw)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--eval-only", action="store_true", help="plot the evaluations only")
    group.add_argument("--train-only", action="store_true", help="plot the training episodes only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        output, n_runs = plot(
            args.runs, args.log_folder, args.algo, args.env, args.exp_id, args.labels, args.output, args.smooth,
            show_train=not args.eval_only, show_eval=not args.train_only,
        )  # fmt: skip
    except RunError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Saved learning curves of {n_runs} run(s) to {output.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
