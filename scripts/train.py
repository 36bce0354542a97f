"""
Train ParallelDQN on one env from a zoo-style config, with one process or under ``mpirun``.

    python scripts/train.py --env CartPole-v1
    mpirun -np 2 python scripts/train.py --env CartPole-v1 --seed 0 --progress

The entry for the env (else ``atari``, else ``default``) is read from ``zoo_configs/dqn.yml``. The run is saved
under ``<log-folder>/parallel_dqn/<env>_<id>/`` (model zip, config, per-env monitor files). Rank 0 evaluates
the greedy policy every ``--eval-freq`` global steps and keeps the best model (``best_model.zip``, as the zoo's
EvalCallback does); at the end it evaluates the final and the best model on fresh seeds and prints their mean
returns.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import yaml
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_parallel_dqn import ParallelDQN, mpi_tools
from sb3_parallel_dqn.hyperparams import DEFAULT_CONF_FILE, ConfigError, load_hyperparams, parse_override
from sb3_parallel_dqn.zoo_env import EnvSettings, make_eval_env, make_train_env, split_hyperparams

ALGO = "parallel_dqn"
# Evaluation envs are seeded far away from the training seeds (seed + rank * n_envs + i).
EVAL_SEED_OFFSET = 1_000_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", type=str, default="CartPole-v1", help="environment ID")
    parser.add_argument("-conf", "--conf-file", type=str, default=str(DEFAULT_CONF_FILE), help="zoo-style YAML config")
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
    parser.add_argument("--log-interval", type=int, default=-1, help="log every this many episodes (-1: SB3 default)")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch threads per rank (default 1)")
    parser.add_argument("--verbose", type=int, default=1, help="0: quiet, 1: training logs")
    parser.add_argument(
        "-params", "--hyperparams", type=str, nargs="+", default=[], metavar="KEY:VALUE",
        help="override hyperparameters, e.g. -params learning_rate:0.001 train_freq:128",
    )  # fmt: skip
    return parser.parse_args(argv)


def next_run_dir(log_folder: str, env_id: str) -> Path:
    """``<log_folder>/parallel_dqn/<env>_<n+1>`` where n is the largest existing run id (zoo layout)."""
    algo_dir = Path(log_folder) / ALGO
    ids = [int(p.name.rsplit("_", 1)[1]) for p in algo_dir.glob(f"{env_id}_*") if p.name.rsplit("_", 1)[1].isdigit()]
    return algo_dir / f"{env_id}_{max(ids, default=0) + 1}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Validate everything before MPI starts or any env is built: every rank reads the same files and fails the same
    # way, so a bad config ends the job with exit code 2 instead of a half-started run.
    try:
        gym.spec(args.env)
        overrides = dict(parse_override(item) for item in args.hyperparams)
        if args.n_envs is not None:
            overrides["n_envs"] = args.n_envs
        if args.vec_env is not None:
            overrides["vec_env"] = args.vec_env
        hyperparams, entry = load_hyperparams(args.env, args.conf_file, overrides)
        model_kwargs, settings = split_hyperparams(hyperparams)
    except (ConfigError, gym.error.Error) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    n_timesteps = args.n_timesteps if args.n_timesteps > 0 else settings.n_timesteps
    if n_timesteps is None:
        print(f"error: no n_timesteps in entry '{entry}' of {args.conf_file}: pass -n", file=sys.stderr)
        return 2

    # Rank 0 picks the run folder and tells the others, so that concurrent ranks never race for an id.
    run_dir = Path(mpi_tools.broadcast_object(str(next_run_dir(args.log_folder, args.env)) if mpi_tools.is_root() else None))
    if mpi_tools.is_root():
        (run_dir / args.env).mkdir(parents=True, exist_ok=True)
        saved = {key: repr(value) if callable(value) else value for key, value in sorted(hyperparams.items())}
        (run_dir / args.env / "config.yml").write_text(yaml.safe_dump({"entry": entry, **saved}, sort_keys=False))
        (run_dir / args.env / "args.yml").write_text(yaml.safe_dump(vars(args)))
        command = f"mpirun -np {mpi_tools.world_size()} python " + shlex.join(sys.argv)
        (run_dir / "command.txt").write_text(command + "\n")
        print(f"Training {args.env} on {mpi_tools.world_size()} process(es), config entry '{entry}', saving to {run_dir}")

    env = make_train_env(args.env, settings, seed=args.seed, monitor_dir=str(run_dir))
    model = ParallelDQN(
        settings.policy,
        env,
        tensorboard_log=args.tensorboard_log,
        seed=args.seed,
        device=args.device,
        verbose=args.verbose,
        torch_num_threads=args.torch_threads,
        **model_kwargs,
    )
    learn_kwargs = {} if args.log_interval < 0 else {"log_interval": args.log_interval}
    callback = None
    if args.eval_freq > 0 and mpi_tools.is_root():
        # Rank 0 alone evaluates: the other ranks simply wait for it at the next gradient sync. EvalCallback counts
        # this rank's env.step() calls, each of which is n_envs * world_size global steps.
        eval_seed = None if args.seed is None else args.seed + EVAL_SEED_OFFSET
        callback = EvalCallback(
            make_eval_env(args.env, settings, seed=eval_seed),
            eval_freq=max(args.eval_freq // (settings.n_envs * mpi_tools.world_size()), 1),
            n_eval_episodes=args.eval_episodes,
            best_model_save_path=str(run_dir),
            log_path=str(run_dir),
            verbose=args.verbose,
        )
    try:
        model.learn(n_timesteps, callback=callback, progress_bar=args.progress, **learn_kwargs)
    finally:
        env.close()
    model_path = run_dir / f"{args.env}.zip"
    model.save(model_path)  # rank 0 writes

    if mpi_tools.is_root():
        print(f"Saved model to {model_path}")
        if args.final_eval_episodes > 0:
            # Fresh episodes, seeded apart from both training and periodic evaluation.
            final_seed = None if args.seed is None else args.seed + 2 * EVAL_SEED_OFFSET
            print(f"Final evaluation over {args.final_eval_episodes} episodes: {evaluate(model, args, settings, final_seed)}")
            best_path = run_dir / "best_model.zip"
            if best_path.exists():
                best = ParallelDQN.load(best_path, device=model.device)
                best_result = evaluate(best, args, settings, final_seed)
                print(f"Best model ({best_path}) over {args.final_eval_episodes} episodes: {best_result}")
    return 0


def evaluate(model: ParallelDQN, args: argparse.Namespace, settings: EnvSettings, seed: int | None) -> str:
    """Mean and std of the greedy policy's return over ``--final-eval-episodes`` episodes."""
    eval_env = make_eval_env(args.env, settings, seed=seed)
    returns, _ = evaluate_policy(model, eval_env, n_eval_episodes=args.final_eval_episodes, return_episode_rewards=True)
    eval_env.close()
    return f"mean return {np.mean(returns):.2f} +/- {np.std(returns):.2f}"


if __name__ == "__main__":
    sys.exit(main())
