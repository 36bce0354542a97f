"""
What ``python -m sb3_parallel_dqn.train`` does: train ParallelDQN on one env from a zoo-style config, with one
process or under ``mpirun``, into a run folder (see :mod:`sb3_parallel_dqn.zoo.run_folder`).

Everything the command line gives is read and checked first, before any collective, run folder or env worker
(:class:`Setup`): the flags, the config, the files to resume from (a foreign zip, a truncated replay buffer), one env
as the model sees it and the model itself, built once on that env alone (:func:`check_model_builds`), and the folders
to write to. Every rank reads the same files and fails the same way, so a bad input ends the job with exit code 2 and
one message naming the key, flag or file.
Then rank 0 picks the run folder, every rank builds its envs and the model (new, or resumed from ``-i``), trains with
checkpoints and periodic evaluation, and saves; a SIGTERM/SIGINT stops every rank after the same rollout and leaves a
checkpoint to resume from (in the last rollout: the final model, without the final evaluation). Rank 0 evaluates the
final and the best model on fresh episodes.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import uuid
import warnings
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from sb3_parallel_dqn import compat
from sb3_parallel_dqn.buffers.prioritized import check_class_convertible
from sb3_parallel_dqn.distributed import comm, lockstep, mesh
from sb3_parallel_dqn.env_names import env_file_name
from sb3_parallel_dqn.interrupt import stop_on_signals
from sb3_parallel_dqn.io.checkpoints import (
    pickled_class,
    replay_buffer_path,
    replay_buffer_shards,
    save_checkpoint,
    save_vecnormalize,
    shard_for_rank,
    vecnormalize_path,
)
from sb3_parallel_dqn.io.safe_load import ModelFileError, check_dqn_state_dict, check_pickle_complete, read_policy_state_dict
from sb3_parallel_dqn.parallel_dqn import ParallelDQN
from sb3_parallel_dqn.validation import ConfigError, UnsupportedSpaceError, check_action_space
from sb3_parallel_dqn.zoo import ALGO
from sb3_parallel_dqn.zoo.callbacks import EVAL_SEED_OFFSET, make_run_callbacks
from sb3_parallel_dqn.zoo.envs import (
    EnvSettings,
    EnvWrappers,
    make_eval_env,
    make_train_env,
    register_optional_envs,
    split_hyperparams,
    wrap_vec_env,
)
from sb3_parallel_dqn.zoo.hyperparams import DEFAULT_CONF_FILE, load_entry, parse_override
from sb3_parallel_dqn.zoo.run_folder import claim_run_dir, saved_config_path, write_run_files, yaml_value


class Setup:
    """Everything read and checked before any collective: a bad input ends every rank the same way, with exit code 2."""

    def __init__(self, args: argparse.Namespace) -> None:
        check_flags(args)
        register_optional_envs(args.env)
        gym.spec(args.env)
        if args.trained_agent:
            check_model_file(args.trained_agent)
            check_replay_buffer_files(args.trained_agent)
        conf_file = Path(args.conf_file) if args.conf_file is not None else DEFAULT_CONF_FILE
        if args.trained_agent and args.conf_file is None:
            # A resumed run keeps its own settings (wrappers, frame stack, n_envs...), saved next to its model.
            resumed_config = saved_config_path(Path(args.trained_agent).parent, args.env)
            conf_file = resumed_config if resumed_config.is_file() else conf_file
        self.conf_file = conf_file

        raw_overrides: dict[str, Any] = {}
        overrides: dict[str, Any] = {}
        for item in args.hyperparams:
            key, value = parse_override(item)
            overrides[key] = value
            raw_overrides[key] = yaml_value(value, item.partition(":")[2].strip())
        flags = ("n_envs", args.n_envs), ("vec_env", args.vec_env), ("model_parallel_size", args.model_parallel_size)
        for key, value in (*flags, ("shard_optimizer", args.shard_optimizer), ("scaling", args.scaling)):
            if value is not None:
                overrides[key] = raw_overrides[key] = value
        entry = load_entry(args.env, conf_file, overrides, raw_overrides)
        self.entry, self.raw_entry = entry.section, entry.raw
        self.model_kwargs, self.settings = split_hyperparams(entry.hyperparams)
        self.n_timesteps = args.n_timesteps if args.n_timesteps > 0 else self.settings.n_timesteps
        if self.n_timesteps is None and not args.trained_agent:
            raise ConfigError(f"no n_timesteps in entry '{self.entry}' of {conf_file}: pass -n")
        self.model_parallel_size = self.model_kwargs.get("model_parallel_size", 1)
        self.sharded = self.model_parallel_size > 1 or self.model_kwargs.get("shard_optimizer", False)
        try:  # the launcher says how many ranks there will be
            mesh.check_size(self.model_parallel_size, comm.launcher_world_size() or 1)
        except mesh.MeshError as error:
            raise ConfigError(str(error), file=conf_file, entry=self.entry, key="model_parallel_size") from None
        if self.sharded and self.settings.normalize_kwargs is not None and (comm.launcher_world_size() or 1) > 1:
            # Every rank then evaluates, and must decide alike when a model is the best so far (saving it is
            # collective); with normalize each replica's statistics, hence its evaluation, differ.
            raise ConfigError(
                "normalize is not supported with model_parallel_size > 1 or shard_optimizer under mpirun",
                file=conf_file,
                entry=self.entry,
                key="normalize",
            )
        train_freq = self.model_kwargs.get("train_freq")
        if isinstance(train_freq, tuple):
            try:  # as the launcher announced the job (no collective here)
                lockstep.check_train_freq(train_freq[0], train_freq[1], comm.launcher_world_size() or 1)
            except lockstep.LockstepError as error:
                raise ConfigError(str(error), file=conf_file, entry=self.entry, key="train_freq") from None
        # One env, as the model will see it, and a model built on it: whatever the env, the policy or the replay
        # buffer refuses fails here, before any folder or collective, rather than in the job.
        env = probe_env(args.env, self.settings, conf_file, self.entry)
        try:
            if not args.trained_agent:  # a resumed model keeps its saved policy
                check_model_builds(self.settings.policy, env, self.model_kwargs, args.torch_threads, conf_file, self.entry)
        finally:
            env.close()
        probe_log_folder(Path(args.log_folder))
        if args.tensorboard_log:
            probe_folder(Path(args.tensorboard_log), "the tensorboard log folder (-tb)")


def check_flags(args: argparse.Namespace) -> None:
    """The command line's own numbers, which no config rule checks."""
    if args.log_interval == 0:
        raise ConfigError("--log-interval: must be >= 1 (episodes between two logs), or -1 for SB3's default; got 0")
    if args.torch_threads is not None and args.torch_threads < 1:
        raise ConfigError(f"--torch-threads: must be >= 1 (torch threads per rank), got {args.torch_threads}")


def check_model_file(path: str) -> None:
    """
    A saved DQN model zip (SB3's layout: ``data`` and ``policy.pth``, with a Q-network and its target), not a missing,
    truncated or foreign file (another algorithm's: its tensors say so, read without unpickling anything).
    """
    if not Path(path).is_file():
        raise ConfigError(f"--trained-agent: no such model file: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as error:
        raise ConfigError(f"--trained-agent: {path} is not a readable model zip (truncated or corrupt?): {error}") from None
    if not {"data", "policy.pth"} <= names:
        raise ConfigError(f"--trained-agent: {path} is a zip but not a saved SB3/ParallelDQN model (no data/policy.pth)")
    try:
        # A file to resume from is trusted (its data is unpickled next), so its size is not bounded here.
        check_dqn_state_dict(read_policy_state_dict(path, max_bytes=sys.maxsize), path)
    except ModelFileError as error:
        raise ConfigError(f"--trained-agent: {error}") from None


def check_replay_buffer_files(trained_agent: str) -> None:
    """The replay buffer files saved with ``trained_agent``, which the run will load, are whole (none unpickled here)."""
    try:
        shards, _ = replay_buffer_shards(trained_agent)
        for shard in shards:
            check_pickle_complete(shard)
    except (ValueError, OSError) as error:
        raise ConfigError(f"--trained-agent: replay buffer: {error}; move it away to resume without it") from None


def probe_env(env_id: str, settings: EnvSettings, conf_file: Path, entry: str) -> VecEnv:
    """
    One env as the model sees it (``env_kwargs``, ``env_wrapper``, the vectorised wrappers), with a Discrete action
    space; each failure a :class:`ConfigError` naming the key it comes from. Close it when done.
    """

    def failed(error: Exception, key: str | None, what: str) -> ConfigError:
        reason = f"{what}: {type(error).__name__}: {' '.join(str(error).split())}"
        return ConfigError(reason, file=conf_file, entry=entry, key=key)

    try:
        env = gym.make(env_id, **settings.env_kwargs)
    except Exception as error:  # the env's own constructor refuses them: TypeError, ValueError, gym.error...
        raise failed(error, "env_kwargs" if settings.env_kwargs else None, f"cannot make {env_id}") from None
    try:
        env = EnvWrappers(settings.env_wrappers)(env)
        # The action space the model will see: after the config's env_wrapper classes (one may make it Discrete).
        check_action_space(env.action_space, env_id)
    except UnsupportedSpaceError as error:
        env.close()
        raise ConfigError(str(error)) from None
    except Exception as error:
        env.close()
        raise failed(error, "env_wrapper", f"cannot wrap {env_id}") from None
    vec_env: VecEnv = DummyVecEnv([lambda: env])
    try:
        return wrap_vec_env(vec_env, settings, eval_env=True)
    except Exception as error:
        vec_env.close()
        key = "vec_env_wrapper" if settings.vec_env_wrappers else "frame_stack" if settings.frame_stack else None
        raise failed(error, key, f"cannot wrap the vectorised {env_id}") from None


# A model built to check the settings needs no more of a buffer than this (the buffer's arrays are allocated).
_TRIAL_BUFFER_SIZE = 1_000
# What each key is reset to, in this order, to find the one a model that cannot be built fails on.
_TRIAL_RESETS: tuple[tuple[str, Any], ...] = (
    ("policy_kwargs", None),
    ("policy", "MlpPolicy"),
    ("replay_buffer_kwargs", None),
    ("replay_buffer_class", None),
    ("optimize_memory_usage", False),
    ("n_steps", 1),
)


def check_model_builds(
    policy: str, env: VecEnv, model_kwargs: dict[str, Any], torch_threads: int | None, conf_file: Path, entry: str
) -> None:
    """
    Build the model once on ``env``, whole and on this process alone (no mesh, no collective, a small buffer, on the
    CPU), and drop it: the policy class and its ``policy_kwargs``, the replay buffer class and its arguments are
    checked by the code that will use them, instead of a rule of their own. When it fails, the key it fails on is
    the first of :data:`_TRIAL_RESETS` whose reset lets the model build.

    :raises ConfigError: naming the key (when one is found), with the error the model raised
    """
    kwargs = {**model_kwargs, "model_parallel_size": 1, "shard_optimizer": False}
    kwargs["buffer_size"] = min(kwargs.get("buffer_size", _TRIAL_BUFFER_SIZE), _TRIAL_BUFFER_SIZE)

    def build(policy: str, kwargs: dict[str, Any]) -> None:
        with warnings.catch_warnings():  # the run's own build warns, once
            warnings.simplefilter("ignore")
            model = ParallelDQN(
                policy, env, device="cpu", torch_num_threads=torch_threads, verbose=0, **kwargs, _init_setup_model=False
            )
            model._setup_model()  # what load() does on one rank alone: no mesh set-up, no broadcast

    try:
        build(policy, kwargs)
        return
    except Exception as error:  # whatever SB3, torch or a buffer raise for arguments they refuse
        reason = f"the model cannot be built with it: {type(error).__name__}: {' '.join(str(error).split())}"
    for key, reset in _TRIAL_RESETS:
        if key == "policy" or key in kwargs:
            trial = {**kwargs, key: reset} if key != "policy" else kwargs
            try:
                build(reset if key == "policy" else policy, trial)
            except Exception:
                continue
            raise ConfigError(reason, file=conf_file, entry=entry, key=key)
    raise ConfigError(reason, file=conf_file, entry=entry)


def probe_log_folder(log_folder: Path) -> None:
    """Fail before training, not at the first save, when the log folder cannot be written."""
    probe_folder(log_folder / ALGO, "the log folder")


def probe_folder(folder: Path, what: str) -> None:
    """Fail before training, not at its first write, when ``folder`` cannot be made or written."""
    probe = folder / f".write-probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"cannot write to {what} {folder}: {error.strerror or error}") from None


def train(args: argparse.Namespace) -> int:
    """Run ``train`` (see the module docstring) with the command line's arguments; return the exit code."""
    try:
        setup = Setup(args)
    except (ConfigError, gym.error.Error) as error:
        # Every rank fails alike; one copy of the message is enough (the launcher says which rank this is). One
        # line, whatever the message holds (an error quoted from SB3 or a space's repr can span lines).
        if comm.launcher_rank() in (0, None):
            print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    settings, world_size = setup.settings, comm.world_size()
    # The mesh before the envs, whose seeds count replicas; with model parallelism, one seed for the job.
    args.seed = mesh.get(setup.model_parallel_size).seed_of_the_job(args.seed)
    try:
        shards = resumable_shards(args.trained_agent, world_size) if args.trained_agent else []
        if shards and "replay_buffer_class" in setup.model_kwargs:  # before the run folder (issue 23, item 3)
            check_class_convertible(pickled_class(shards[0]), setup.model_kwargs["replay_buffer_class"], str(shards[0]))
    except ConfigError as error:
        return report(error)

    # Rank 0 picks the run folder and tells the others, so that concurrent ranks never race for an id.
    uuid_str = f"_{uuid.uuid4()}" if args.uuid else ""
    new_dir = str(claim_run_dir(args.log_folder, args.env, uuid_str)) if comm.is_root() else None
    run_dir = Path(comm.broadcast_object(new_dir))
    if comm.is_root():
        source = f"entry '{setup.entry}' of {setup.conf_file}"
        command = shlex.join([sys.executable, *sys.argv])
        command = f"mpirun -np {world_size} {command}" if world_size > 1 else command
        write_run_files(run_dir, args.env, setup.raw_entry, source, vars(args), command)
        print(f"Training {args.env} on {world_size} process(es), config {source}, saving to {run_dir}")

    vecnormalize_stats = vecnormalize_path(args.trained_agent, args.env) if args.trained_agent else None
    env = make_train_env(
        args.env,
        settings,
        seed=args.seed,
        monitor_dir=str(run_dir),
        vecnormalize_path=vecnormalize_stats,
        model_parallel_size=setup.model_parallel_size,
    )
    try:
        try:
            model, remaining = build_model(args, setup, env, shards)
        except ConfigError as error:  # every rank loaded the same files, so every rank ends here alike
            return report(error)
        callbacks = make_run_callbacks(
            args.env,
            settings,
            run_dir,
            seed=args.seed,
            save_freq=args.save_freq,
            save_replay_buffer=args.save_replay_buffer,
            eval_freq=args.eval_freq,
            eval_episodes=args.eval_episodes,
            verbose=args.verbose,
            everywhere=setup.sharded,
            model_parallel_size=setup.model_parallel_size,
        )
        learn_kwargs: dict[str, Any] = {} if args.log_interval < 0 else {"log_interval": args.log_interval}
        # SIGTERM/SIGINT on any rank: every rank stops after the same rollout, then writes a checkpoint below.
        with stop_on_signals():
            model.learn(
                remaining,
                callback=callbacks,
                progress_bar=args.progress,
                reset_num_timesteps=not args.trained_agent,
                **learn_kwargs,
            )
        stopped_by = model.stopped_by_signal  # agreed by every rank at the end of a rollout
        if stopped_by is not None and model.num_timesteps < compat.total_timesteps(model):
            return save_interrupted(model, args, run_dir)
        # Else training ran to its end (a signal in the last rollout stops after its updates): the final model.
        model_path = run_dir / f"{env_file_name(args.env)}.zip"
        if args.save_replay_buffer:
            model.save_replay_buffer(replay_buffer_path(model_path))  # every rank, its own shard
        model.save(model_path)  # every rank (a split model is gathered), rank 0 writes
        save_vecnormalize(model.get_vec_normalize_env(), vecnormalize_path(model_path, args.env))  # rank 0 writes
    finally:
        env.close()

    if comm.is_root():
        print(f"Saved model to {model_path}")
    if stopped_by is not None:  # issue 23, item 5: it used to exit with a checkpoint only, no <env>.zip
        if comm.is_root():
            print(f"{stopped_by.name} arrived in the last rollout: training is complete, final evaluation skipped", flush=True)
        return 128 + stopped_by.value
    # A split model evaluates on every rank of its group (each forward pass is theirs together): all ranks do.
    if args.final_eval_episodes > 0 and (comm.is_root() or setup.model_parallel_size > 1):
        final_evaluation(model, args, settings, run_dir)
    return 0


def report(error: Exception) -> int:
    """Print a bad-input error once (rank 0) and give the exit code for it; every rank fails alike."""
    if comm.is_root():
        print(f"error: {error}", file=sys.stderr)
    return 2


def resumable_shards(trained_agent: str, world_size: int) -> list[Path]:
    """The replay buffer shards saved with ``trained_agent`` (one per rank that saved them), if this job can share them."""
    try:
        shards, shard_world_size = replay_buffer_shards(trained_agent)
        if shards:
            shard_for_rank(shards, 0, world_size)  # every rank checks alike, before any env is built
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if shards and shard_world_size != world_size and comm.is_root():
        kept = (
            "the extra ranks start from copies of them"
            if world_size > len(shards)
            else (f"shards {world_size}-{len(shards) - 1} are left out (buffer_size is per rank)")
        )
        print(f"Replay buffers saved by {shard_world_size} rank(s), resumed on {world_size}: rank r loads shard "
              f"r mod {shard_world_size}; {kept}")  # fmt: skip
    return shards


def build_model(args: argparse.Namespace, setup: Setup, env: Any, shards: list[Path]) -> tuple[ParallelDQN, int]:
    """A new model, or the resumed one with its replay buffer shard; and the global steps to train."""
    if not args.trained_agent:
        model = ParallelDQN(
            setup.settings.policy,
            env,
            tensorboard_log=args.tensorboard_log,
            seed=args.seed,
            device=args.device,
            verbose=args.verbose,
            torch_num_threads=args.torch_threads,
            **setup.model_kwargs,
        )
        assert setup.n_timesteps is not None
        return model, setup.n_timesteps

    # As the zoo: the policy (architecture) is the saved one; the other hyperparameters come from the config.
    kwargs = {key: value for key, value in setup.model_kwargs.items() if key != "policy_kwargs"}
    try:
        model = ParallelDQN.load(
            args.trained_agent,
            env=env,
            seed=args.seed,
            tensorboard_log=args.tensorboard_log,
            verbose=args.verbose if comm.is_root() else 0,
            device=args.device,
            torch_num_threads=args.torch_threads,
            **kwargs,
        )
    except ValueError as error:  # SB3: "Observation spaces do not match", "Action spaces do not match"
        raise ConfigError(f"--trained-agent {args.trained_agent} does not fit {args.env} as configured: {error}") from None
    if shards:
        model.load_replay_buffer(replay_buffer_path(args.trained_agent))  # this rank's shard (shard_for_rank)
        buffer = model.replay_buffer
        assert buffer is not None
        if buffer.n_envs != env.num_envs or buffer.obs_shape != model.observation_space.shape:
            raise ConfigError(
                f"the replay buffer saved with {args.trained_agent} holds {buffer.n_envs} env(s) per rank with "
                f"observations {buffer.obs_shape}, this run has {env.num_envs} with {model.observation_space.shape}: "
                "resume with the original n_envs, or move the replay buffer files away"
            )
    if args.n_timesteps > 0:
        remaining = args.n_timesteps
    else:
        # learn(reset_num_timesteps=False) adds num_timesteps back: the schedules span the original run.
        budget = compat.total_timesteps(model)
        remaining = budget - model.num_timesteps
        if remaining <= 0:
            raise SystemExit(f"error: {args.trained_agent} finished its {budget} steps: pass -n to go on")
    if comm.is_root():
        print(f"Resuming from {args.trained_agent} at {model.num_timesteps} global steps, for {remaining} more")
    return model, remaining


def save_interrupted(model: ParallelDQN, args: argparse.Namespace, run_dir: Path) -> int:
    """After a stop by SIGTERM/SIGINT: a checkpoint to resume from (every rank writes its share), and 128 + signal."""
    stopped_by = model.stopped_by_signal
    assert stopped_by is not None
    checkpoint = save_checkpoint(model, run_dir, save_replay_buffer=args.save_replay_buffer)
    if comm.is_root():
        print(
            f"Interrupted by {stopped_by.name} at {model.num_timesteps} global steps: saved {checkpoint}"
            f"{' with the replay buffers' if args.save_replay_buffer else ''}; continue with -i {checkpoint}",
            flush=True,
        )
    return 128 + stopped_by.value


def final_evaluation(model: ParallelDQN, args: argparse.Namespace, settings: EnvSettings, run_dir: Path) -> None:
    """Evaluate the final and the best model on fresh episodes, seeded apart from training and periodic evaluation."""
    seed = None if args.seed is None else args.seed + 2 * EVAL_SEED_OFFSET
    result = evaluate(model, args, settings, run_dir, seed)
    if comm.is_root():
        print(f"Final evaluation over {args.final_eval_episodes} episodes: {result}")
    best_path = run_dir / "best_model.zip"
    if best_path.exists() and comm.is_root():
        best = ParallelDQN.load(best_path, device=model.device)  # whole (M = 1): rank 0 alone
        result = evaluate(best, args, settings, run_dir, seed)
        print(f"Best model ({best_path}) over {args.final_eval_episodes} episodes: {result}")


def evaluate(model: ParallelDQN, args: argparse.Namespace, settings: EnvSettings, run_dir: Path, seed: int | None) -> str:
    """Mean and std of the greedy policy's return over ``--final-eval-episodes`` episodes."""
    # The statistics saved with the run (the final ones), as evaluate.py would use them.
    statistics = vecnormalize_path(run_dir / f"{env_file_name(args.env)}.zip", args.env)
    eval_env = make_eval_env(args.env, settings, seed=seed, vecnormalize_path=statistics)
    returns, _ = evaluate_policy(model, eval_env, n_eval_episodes=args.final_eval_episodes, return_episode_rewards=True)
    eval_env.close()
    return f"mean return {np.mean(returns):.2f} +/- {np.std(returns):.2f}"
