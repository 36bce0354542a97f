"""
Side-by-side wall-clock benchmark: SB3 ``DQN`` vs ``ParallelDQN`` (1 process) vs ``ParallelDQN`` under ``mpirun``.

    python scripts/benchmark.py --env CartPole-v1 --seeds 0 1 2 --out bench/cartpole

Every configuration uses the same zoo hyperparameters (``zoo_configs/dqn.yml``, or ``--conf-file``) and the same
global env-step budget. Runs are interleaved (seed 0: A B C, seed 1: A B C, ...) so that machine drift hits all
configurations alike. Each run is a fresh process. During training, rank 0 evaluates the greedy policy every
``--eval-freq`` global steps on a separate env; evaluation time is excluded from the training clock. Reported per
configuration (medians over seeds): training seconds, seconds to the first evaluation >= threshold, solve rate,
env steps/s, gradient updates/s, final mean return over ``--final-episodes`` fresh episodes, and for MPI runs the
mean sync time per gradient step next to a raw ``MPI.Allreduce`` of the same buffer timed in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

THRESHOLDS = {"CartPole-v1": 475.0, "Acrobot-v1": -100.0, "LunarLander-v3": 200.0, "MountainCar-v0": -110.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("-conf", "--conf-file", default=None, help="zoo-style YAML (default: zoo_configs/dqn.yml)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("-n", "--n-timesteps", type=int, default=None, help="global budget (default: the config's)")
    parser.add_argument("--configs", nargs="+", default=["sb3", "pdqn-1", "pdqn-2"],
                        help="sb3, pdqn-<W> (ParallelDQN on W ranks)")  # fmt: skip
    parser.add_argument("--eval-freq", type=int, default=2_500, help="global steps between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--final-episodes", type=int, default=20)
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("-params", "--hyperparams", nargs="+", default=[], metavar="KEY:VALUE",
                        help="overrides applied to every configuration")  # fmt: skip
    parser.add_argument("--pdqn-params", nargs="+", default=[], metavar="KEY:VALUE",
                        help="overrides applied to the ParallelDQN configurations only")  # fmt: skip
    parser.add_argument("--sb3-params", nargs="+", default=[], metavar="KEY:VALUE",
                        help="overrides applied to SB3 DQN only, e.g. to run it on the zoo's own values")  # fmt: skip
    parser.add_argument("--out", default="bench", help="output folder")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------------
# Worker: one training run in this process (rank 0 of an mpirun job writes the result).
# ---------------------------------------------------------------------------------------------------------------------


def run_worker(args: argparse.Namespace) -> None:
    import torch as th
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.evaluation import evaluate_policy

    from sb3_parallel_dqn import ParallelDQN, mpi_tools
    from sb3_parallel_dqn.hyperparams import load_hyperparams, parse_override
    from sb3_parallel_dqn.zoo_env import make_eval_env, make_train_env, split_hyperparams

    params = args.hyperparams + (args.pdqn_params if args.worker == "pdqn" else args.sb3_params)
    hyperparams, _ = load_hyperparams(args.env, args.conf_file, dict(parse_override(p) for p in params))
    model_kwargs, settings = split_hyperparams(hyperparams)
    n_timesteps = args.n_timesteps or settings.n_timesteps
    assert n_timesteps is not None, "no n_timesteps in the config: pass -n"
    threshold = args.threshold if args.threshold is not None else THRESHOLDS.get(args.env, float("inf"))
    root = mpi_tools.is_root()

    class TimedEval(BaseCallback):
        """Evaluate every eval_freq global steps on rank 0; keep evaluation time off the training clock."""

        def __init__(self) -> None:
            super().__init__()
            self.eval_env = make_eval_env(args.env, settings, seed=args.seed + 10_000) if root else None
            self.next_eval = args.eval_freq
            self.eval_seconds = 0.0
            self.curve: list[tuple[int, float, float]] = []  # (global step, training seconds, mean return)

        def _on_training_start(self) -> None:
            self.start = time.perf_counter()

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next_eval:
                self.next_eval += args.eval_freq
                if self.eval_env is not None:
                    t0 = time.perf_counter()
                    mean_return, _ = evaluate_policy(self.model, self.eval_env, n_eval_episodes=args.eval_episodes)
                    self.eval_seconds += time.perf_counter() - t0
                    self.curve.append((self.num_timesteps, self.training_seconds(), float(mean_return)))  # type: ignore[arg-type]
            return True

        def training_seconds(self) -> float:
            return time.perf_counter() - self.start - self.eval_seconds

    th.set_num_threads(1)  # SB3's best setting on small nets (ParallelDQN does this by itself)
    env = make_train_env(args.env, settings, seed=args.seed)
    algo = DQN if args.worker == "sb3" else ParallelDQN
    model = algo(settings.policy, env, seed=args.seed, device="cpu", **model_kwargs)
    callback = TimedEval()
    model.learn(n_timesteps, callback=callback)
    train_seconds = callback.training_seconds()
    env.close()

    result: dict[str, Any] = {}
    averager = getattr(model, "_grad_averager", None)
    if averager is not None:
        # Raw Allreduce of a buffer of the same size, same process, right after training (every rank takes part).
        from mpi4py import MPI

        buffer = np.zeros(averager.n_floats, dtype=np.float32)
        comm = mpi_tools.comm()
        assert comm is not None
        for _ in range(50):
            comm.Allreduce(MPI.IN_PLACE, buffer)
        comm.Barrier()
        t0 = time.perf_counter()
        n_reps = 2_000
        for _ in range(n_reps):
            comm.Allreduce(MPI.IN_PLACE, buffer)
        result["raw_allreduce_ms"] = 1e3 * (time.perf_counter() - t0) / n_reps
        result["allreduce_floats"] = averager.n_floats
        result["sync_ms"] = model.logger.name_to_value.get("time/mpi_sync_ms")
    if not root:
        return
    final_env = make_eval_env(args.env, settings, seed=args.seed + 20_000)
    returns, _ = evaluate_policy(model, final_env, n_eval_episodes=args.final_episodes, return_episode_rewards=True)
    first_solve = next((seconds for _, seconds, ret in callback.curve if ret >= threshold), None)
    # "stable": two evaluations in a row at or above the threshold
    pairs = zip(callback.curve, callback.curve[1:], strict=False)
    stable = next((second[1] for first, second in pairs if min(first[2], second[2]) >= threshold), None)
    result.update(
        world_size=mpi_tools.world_size(),
        train_seconds=train_seconds,
        env_steps_per_s=model.num_timesteps / train_seconds,
        updates_per_s=model._n_updates / train_seconds,
        n_updates=model._n_updates,
        num_timesteps=model.num_timesteps,
        seconds_to_threshold=first_solve,
        seconds_to_stable_threshold=stable,
        final_mean_return=float(np.mean(returns)),
        final_std_return=float(np.std(returns)),
        curve=callback.curve,
    )
    Path(args.result).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------------------------------
# Driver: interleave the configurations over seeds, then summarise.
# ---------------------------------------------------------------------------------------------------------------------


def command_for(config: str, seed: int, args: argparse.Namespace, result: Path) -> list[str]:
    worker = [sys.executable, os.path.abspath(__file__), "--worker", "sb3" if config == "sb3" else "pdqn"]
    worker += ["--env", args.env, "--seed", str(seed), "--result", str(result), "--eval-freq", str(args.eval_freq)]
    worker += ["--eval-episodes", str(args.eval_episodes), "--final-episodes", str(args.final_episodes)]
    if args.conf_file:
        worker += ["--conf-file", args.conf_file]
    if args.n_timesteps:
        worker += ["-n", str(args.n_timesteps)]
    if args.threshold is not None:
        worker += ["--threshold", str(args.threshold)]
    if args.hyperparams:
        worker += ["-params", *args.hyperparams]
    if args.pdqn_params:
        worker += ["--pdqn-params", *args.pdqn_params]
    if args.sb3_params:
        worker += ["--sb3-params", *args.sb3_params]
    if config.startswith("pdqn-") and int(config.split("-")[1]) > 1:
        mpirun = str(Path(sys.executable).parent / "mpirun")
        return [mpirun, "-np", config.split("-")[1], *worker]
    return worker


def summarise(results: dict[str, list[dict[str, Any]]], threshold: float) -> str:
    def median(values: list[float | None], digits: int = 1) -> str:
        present = [v for v in values if v is not None]
        return f"{np.median(present):.{digits}f}" if present else "-"

    base = results.get("sb3", [])
    base_train = np.median([r["train_seconds"] for r in base]) if base else None
    lines = [
        f"| config | train s (median) | speed-up vs SB3 | s to eval >= {threshold:g} | solved | stable solve | env steps/s "
        "| updates/s | final return (mean of seeds) | sync ms | raw Allreduce ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for config, runs in results.items():
        train = np.median([r["train_seconds"] for r in runs])
        solved = sum(r["seconds_to_threshold"] is not None for r in runs)
        stable = sum(r["seconds_to_stable_threshold"] is not None for r in runs)
        lines.append(
            f"| {config} | {train:.1f} | {base_train / train if base_train else float('nan'):.2f}x "
            f"| {median([r['seconds_to_threshold'] for r in runs])} | {solved}/{len(runs)} | {stable}/{len(runs)} "
            f"| {np.median([r['env_steps_per_s'] for r in runs]):.0f} | {np.median([r['updates_per_s'] for r in runs]):.0f} "
            f"| {np.mean([r['final_mean_return'] for r in runs]):.1f} "
            f"| {median([r.get('sync_ms') for r in runs], 3)} | {median([r.get('raw_allreduce_ms') for r in runs], 3)} |"
        )
    return "\n".join(lines)


def run_driver(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    threshold = args.threshold if args.threshold is not None else THRESHOLDS.get(args.env, float("inf"))
    results: dict[str, list[dict[str, Any]]] = {config: [] for config in args.configs}
    commands = []
    for seed in args.seeds:
        for config in args.configs:
            result_file = out / f"{config}_seed{seed}.json"
            command = command_for(config, seed, args, result_file)
            commands.append(" ".join(command))
            print(f"[{time.strftime('%H:%M:%S')}] {config} seed {seed} ...", flush=True)
            proc = subprocess.run(command, timeout=args.timeout, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
                return 1
            result = json.loads(result_file.read_text())
            results[config].append(result)
            print(
                f"    train {result['train_seconds']:.1f} s, first >= threshold at {result['seconds_to_threshold']} s, "
                f"final {result['final_mean_return']:.1f}",
                flush=True,
            )
    table = summarise(results, threshold)
    import stable_baselines3
    import torch

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
    machine += f"torch {torch.__version__}, stable-baselines3 {stable_baselines3.__version__}"
    (out / "results.json").write_text(json.dumps({"args": vars(args), "machine": machine, "results": results}, indent=1))
    report = f"# {args.env}\n\n{machine}\n\nCommand: `{' '.join(sys.argv)}`\n\n{table}\n"
    (out / "results.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.worker:
        run_worker(arguments)
    else:
        sys.exit(run_driver(arguments))
