"""
Side-by-side wall-clock benchmark: SB3 ``DQN`` vs ``ParallelDQN`` (1 process) vs ``ParallelDQN`` under ``mpirun``.

    python -m sb3_parallel_dqn.benchmark --env CartPole-v1 --seeds 0 1 2 --out bench/cartpole

Every configuration uses the same zoo hyperparameters (``zoo_configs/dqn.yml``, or ``--conf-file``) and the same
global env-step budget. Runs are interleaved (seed 0: A B C, seed 1: A B C, ...) so that machine drift hits all
configurations alike. Each run is a fresh process. During training, rank 0 evaluates the greedy policy every
``--eval-freq`` global steps on a separate env; evaluation time is excluded from the training clock. Reported per
configuration (medians over seeds): training seconds, seconds to the first evaluation >= threshold, solve rate,
env steps/s, gradient updates/s, final mean return over ``--final-episodes`` fresh episodes, and for MPI runs the
mean sync time per gradient step next to a raw ``MPI.Allreduce`` of the same buffer timed in the same process.

After the timed run, each worker also profiles ``--profile-steps`` gradient steps of the trained model
(``ParallelDQN.train()`` itself, its engine timing each part: replay sample, forward + loss + backward, gradient
sync, clip + optimizer step; a replay of SB3's step for SB3), and records its peak RSS; doing this outside the timed
run keeps the timed numbers unperturbed. Besides ``results.json`` and ``results.md`` the
driver writes ``returns.png`` (mean eval return vs training seconds) and ``speedup.png`` (ratios vs SB3).

    python -m sb3_parallel_dqn.benchmark --quick --out bench/quick   # 1 seed, 6k steps: a smoke run of a few minutes

(also ``sb3-parallel-dqn benchmark ...`` and ``python scripts/benchmark.py ...``). What it does:
:mod:`sb3_parallel_dqn.bench.benchmark`.
"""

from __future__ import annotations

import argparse
import sys

from sb3_parallel_dqn.bench.benchmark import (
    DEFAULTS,
    LAYOUTS,
    QUICK,
    SB3_THRESHOLD,
    THRESHOLDS,
    run_driver,
    run_parallelism,
    run_update_worker,
    run_worker,
)


def threshold_value(text: str) -> str | float:
    return SB3_THRESHOLD if text == SB3_THRESHOLD else float(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("-conf", "--conf-file", default=None,
                        help="zoo-style YAML (default: zoo_configs/dqn.yml); 'zoo': rl_zoo3's own dqn.yml")  # fmt: skip
    parser.add_argument("--sb3-conf-file", default=None,
                        help="YAML for SB3 DQN only (default: --conf-file); 'zoo': rl_zoo3's own dqn.yml")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 3 4 (--quick: 0)")
    parser.add_argument("-n", "--n-timesteps", type=int, default=None,
                        help="global budget (default: the config's; --quick: 6000)")  # fmt: skip
    parser.add_argument("--configs", nargs="+", default=["sb3", "pdqn-1", "pdqn-2"],
                        help="sb3, pdqn-<W> (ParallelDQN on W ranks), mp-<W> (one model split over W ranks), "
                             "zero-<W> (W ranks with shard_optimizer)")  # fmt: skip
    parser.add_argument("--eval-freq", type=int, default=None,
                        help="global steps between evaluations (default: 2500; --quick: 2000)")  # fmt: skip
    parser.add_argument("--eval-episodes", type=int, default=None, help="default: 10 (--quick: 3)")
    parser.add_argument("--final-episodes", type=int, default=None, help="default: 20 (--quick: 5)")
    parser.add_argument("--threshold", type=threshold_value, default=None,
                        help=f"mean eval return that counts as solved (default per env: {THRESHOLDS}); 'sb3': the "
                             "median of SB3's final returns, i.e. time to the return SB3 reaches with the budget")  # fmt: skip
    parser.add_argument("--reuse", action="store_true",
                        help="reuse the results in --out an earlier driver made with the same worker command")  # fmt: skip
    parser.add_argument("--no-run", action="store_true",
                        help="run nothing: summarise the results in --out made with the same worker commands")  # fmt: skip
    parser.add_argument("--profile-steps", type=int, default=None,
                        help="gradient steps timed part by part after training (default: 200; --quick: 100)")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 seed, 6000 global steps, short evaluations (a few minutes on 2 cores)")  # fmt: skip
    parser.add_argument("-params", "--hyperparams", nargs="+", default=[], metavar="KEY:VALUE",
                        help="overrides applied to every configuration")  # fmt: skip
    parser.add_argument("--pdqn-params", nargs="+", default=[], metavar="KEY:VALUE",
                        help="overrides applied to the ParallelDQN configurations only")  # fmt: skip
    parser.add_argument("--sb3-params", nargs="+", default=[], metavar="KEY:VALUE",
                        help="overrides applied to SB3 DQN only, e.g. to run it on the zoo's own values")  # fmt: skip
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads per process (every configuration)")
    parser.add_argument("--device", default="cpu", help="torch device of every configuration (auto: GPUs by local rank)")
    parser.add_argument("--stop-at-stable", action="store_true",
                        help="end each run at its stable solve (two evaluations in a row at the threshold): for "
                             "steps to a solve, without the rest of the budget (the final return is then the model's "
                             "at that point)")  # fmt: skip
    parser.add_argument("--out", default="bench", help="output folder")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--parallelism", action="store_true",
                        help="instead: the time of one update and the bytes per rank of --nets in every layout")  # fmt: skip
    parser.add_argument("--nets", nargs="+", default=["256x256", "1024x1024", "4096x4096", "cnn"],
                        help="--parallelism: MLPs (hidden units, x-separated) on CartPole, or cnn (NatureCNN)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=256, help="--parallelism: the global batch")
    parser.add_argument("--updates", type=int, default=30, help="--parallelism: updates timed per layout")
    parser.add_argument("--replay", action="store_true",
                        help="instead: bytes per transition and sample() time of SB3's ReplayBuffer and FrameReplayBuffer "
                             "on the same 4 x 84 x 84 frame stacks")  # fmt: skip
    parser.add_argument("--replay-size", type=int, default=100_000, help="--replay: transitions stored")
    parser.add_argument("--replay-batch", type=int, default=32, help="--replay: the batch of each sample()")
    parser.add_argument("--replay-samples", type=int, default=2_000, help="--replay: sample() calls timed per repeat")
    parser.add_argument("--replay-repeats", type=int, default=5, help="--replay: repeats (the median is reported)")
    parser.add_argument("--scaling-report", nargs="+", default=None, metavar="MODE=FOLDER",
                        help="instead: steps to a stable solve by world size from these output folders (one per "
                             "scaling mode, with pdqn-<W> runs), and the projected time on W cores")  # fmt: skip
    parser.add_argument("--costs", default=None,
                        help="--scaling-report: a folder of pdqn-2 runs on an unloaded machine (per-rank costs)")  # fmt: skip
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--net", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--layout", default=None, choices=list(LAYOUTS), help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker == "update":
        run_update_worker(args)
        return 0
    if args.worker:
        run_worker(args)
        return 0
    if args.scaling_report:
        from sb3_parallel_dqn.bench.scaling_report import run_scaling_report

        return run_scaling_report(args)
    if args.replay:
        from sb3_parallel_dqn.bench.replay_benchmark import run_replay

        return run_replay(args)
    return run_parallelism(args) if args.parallelism else run_driver(args)


if __name__ == "__main__":
    sys.exit(main())
