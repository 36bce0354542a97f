"""
Train ParallelDQN on one env from a zoo-style config, with one process or under ``mpirun``.

    python -m sb3_parallel_dqn.train --env CartPole-v1            # or: sb3-parallel-dqn train, scripts/train.py
    mpirun -np 2 python -m sb3_parallel_dqn.train --env CartPole-v1 --seed 0 --progress
    mpirun -np 2 python -m sb3_parallel_dqn.train --env PongNoFrameskip-v4 --save-freq 100000 --save-replay-buffer
    mpirun -np 2 python -m sb3_parallel_dqn.train --env CartPole-v1 -i <run folder>/rl_model_20000_steps.zip

The entry for the env (else ``atari``, else ``default``) is read from the package's ``zoo/configs/dqn.yml`` (the
repository's ``zoo_configs/dqn.yml``) or ``-conf``, with ``-params key:value`` overrides, as in rl-baselines3-zoo.
The run is saved under ``<log-folder>/parallel_dqn/<env>_<id>/`` (see :mod:`sb3_parallel_dqn.zoo.run_folder`). Rank 0
evaluates the greedy policy every ``--eval-freq`` global steps and keeps the best model (``best_model.zip``, as the zoo's
EvalCallback does); at the end it evaluates the final and the best model on fresh seeds and prints their mean
returns. ``--save-freq`` writes atomic checkpoints (with ``--save-replay-buffer``, every rank's replay buffer too).

``-i/--trained-agent`` continues a saved run exactly: global timesteps, schedules and the target-update phase go on
from the saved counters, each rank reloads its replay buffer shard when one was saved, and without ``-n`` the run
ends where the original one was meant to end. ``-n N`` trains N more global steps instead (the schedules then
stretch over the longer run). The env settings come from the saved run's ``<env>/config.yml`` unless ``-conf`` is
given. Another world size works too: rank r reloads replay buffer shard r mod (the ranks that saved them), so fewer
ranks leave the last shards out and more ranks start from copies
(:func:`sb3_parallel_dqn.io.checkpoints.shard_for_rank`). What it does: :mod:`sb3_parallel_dqn.zoo.experiment`.
"""

from __future__ import annotations

import argparse
import sys

from sb3_parallel_dqn.distributed import watchdog
from sb3_parallel_dqn.scaling import SCALING_MODES
from sb3_parallel_dqn.zoo.experiment import train
from sb3_parallel_dqn.zoo.hyperparams import DEFAULT_CONF_FILE


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", type=str, default="CartPole-v1", help="environment ID")
    parser.add_argument(
        "-conf", "--conf-file", type=str, default=None,
        help=f"zoo-style YAML config (default: {DEFAULT_CONF_FILE.name} of the package, or the resumed run's config)",
    )  # fmt: skip
    parser.add_argument("-n", "--n-timesteps", type=int, default=-1, help="global env steps (overrides the config)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (rank r, env i use seed + r * n_envs + i)")
    parser.add_argument("--n-envs", type=int, default=None, help="envs per rank (overrides the config)")
    parser.add_argument("--vec-env", choices=["subproc", "dummy"], default=None, help="VecEnv class for the envs of a rank")
    parser.add_argument("-f", "--log-folder", type=str, default="logs", help="where runs are saved")
    parser.add_argument("-tb", "--tensorboard-log", type=str, default=None, help="tensorboard log dir (rank 0 writes)")
    parser.add_argument("--device", type=str, default="auto", help="PyTorch device: auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--progress", action="store_true", help="show a progress bar (rank 0, global steps)")
    parser.add_argument("--eval-freq", type=int, default=10_000, help="evaluate every this many global steps (<= 0: never)")
    parser.add_argument("--eval-episodes", type=int, default=5, help="episodes per periodic evaluation")
    parser.add_argument("--final-eval-episodes", type=int, default=20, help="episodes of the final evaluations (0: skip)")
    parser.add_argument("--save-freq", type=int, default=-1, help="checkpoint every this many global steps (<= 0: never)")
    parser.add_argument(
        "--save-replay-buffer", action="store_true",
        help="save every rank's replay buffer with checkpoints and at the end",
    )  # fmt: skip
    parser.add_argument("-i", "--trained-agent", type=str, default="", help="continue training this saved model (.zip)")
    parser.add_argument("--uuid", action="store_true", help="append a UUID to the run folder name")
    parser.add_argument("--log-interval", type=int, default=-1, help="log every this many episodes (-1: SB3 default)")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch threads per rank (default 1)")
    parser.add_argument(
        "--model-parallel-size", type=int, default=None,
        help="ranks per Q-network, split Megatron-style (overrides the config's model_parallel_size)",
    )  # fmt: skip
    parser.add_argument(
        "--shard-optimizer", action="store_true", default=None,
        help="shard Adam's state over the data-parallel ranks, ZeRO-1 (overrides the config's shard_optimizer)",
    )  # fmt: skip
    parser.add_argument(
        "--scaling", choices=SCALING_MODES, default=None,
        help="how batch, updates and learning rate follow the number of ranks (overrides the config's scaling; "
        "see sb3_parallel_dqn.scaling): none, sqrt (holds steps to a return), strong (the tuned global dynamics)",
    )  # fmt: skip
    parser.add_argument(
        "--collective-timeout", type=_positive_seconds, default=None, metavar="SECONDS",
        help="end the job when one collective waits longer (default: $SB3_PARALLEL_DQN_COLLECTIVE_TIMEOUT, else 1800)",
    )  # fmt: skip
    parser.add_argument("--verbose", type=int, default=1, help="0: quiet, 1: training logs")
    parser.add_argument(
        "-params", "--hyperparams", type=str, nargs="+", default=[], metavar="KEY:VALUE",
        help="override hyperparameters, e.g. -params learning_rate:0.001 train_freq:128",
    )  # fmt: skip
    return parser.parse_args(argv)


def _positive_seconds(value: str) -> float:
    seconds = float(value)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, not {value}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The collective watchdog's timeout is process-wide (sb3_parallel_dqn.distributed.watchdog), as torch's is.
    watchdog.set_timeout(args.collective_timeout)
    return train(args)


if __name__ == "__main__":
    sys.exit(main())
