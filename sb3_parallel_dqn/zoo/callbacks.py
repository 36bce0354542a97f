"""The callbacks of a zoo-style run: the config's own, checkpoints (every rank) and periodic evaluation (rank 0)."""

from __future__ import annotations

import os
from pathlib import Path

from stable_baselines3.common.callbacks import BaseCallback, EvalCallback

from sb3_parallel_dqn.callbacks import ParallelEvalCallback
from sb3_parallel_dqn.distributed import comm, lockstep, mesh
from sb3_parallel_dqn.io.checkpoints import ParallelCheckpointCallback, save_vecnormalize, vecnormalize_path
from sb3_parallel_dqn.zoo.envs import EnvSettings, make_callbacks, make_eval_env

# Evaluation envs are seeded far away from the training seeds (seed + rank * n_envs + i).
EVAL_SEED_OFFSET = 1_000_000


class SaveVecNormalizeCallback(BaseCallback):
    """
    Save the training envs' ``VecNormalize`` statistics (rank 0's) to ``save_path`` whenever it is called, e.g. as
    ``EvalCallback(callback_on_new_best=...)``, so that the best model is kept with its statistics (as the zoo does).
    Does nothing when the envs are not normalized.

    :param save_path: the ``.pkl`` file to write (atomically)
    """

    def __init__(self, save_path: str | os.PathLike[str], verbose: int = 0) -> None:
        super().__init__(verbose)
        self.save_path = save_path

    def _on_step(self) -> bool:
        saved = save_vecnormalize(self.model.get_vec_normalize_env(), self.save_path)
        if saved is not None and self.verbose >= 2:
            print(f"Saving VecNormalize to {saved}")
        return True


def make_run_callbacks(
    env_id: str,
    settings: EnvSettings,
    run_dir: Path,
    *,
    seed: int | None,
    save_freq: int,
    save_replay_buffer: bool,
    eval_freq: int,
    eval_episodes: int,
    verbose: int,
    everywhere: bool = False,
    model_parallel_size: int = 1,
) -> list[BaseCallback]:
    """
    As the zoo: the config's own callbacks, checkpoints every ``save_freq`` global steps (every rank writes its share),
    then periodic evaluation every ``eval_freq`` global steps (rank 0 alone; the other ranks simply wait for it at the
    next gradient sync), which keeps ``best_model.zip`` with its normalization statistics.

    ``everywhere``: every rank evaluates when the model is split or its optimizer sharded (a split model's forward
    pass takes its whole group, and saving the best model gathers the shards, collectively), and every decision is
    rank 0's, broadcast (:class:`~sb3_parallel_dqn.callbacks.ParallelEvalCallback`); rank 0 alone writes the files.
    """
    callbacks = make_callbacks(settings)
    if save_freq > 0:
        callbacks.append(
            ParallelCheckpointCallback(
                save_freq=save_freq,
                save_path=str(run_dir),
                save_replay_buffer=save_replay_buffer,
                save_vecnormalize=True,
                verbose=2 if verbose >= 1 else 0,
            )
        )
    if eval_freq > 0 and (comm.is_root() or everywhere):
        eval_seed = None if seed is None else seed + EVAL_SEED_OFFSET
        callbacks.append(
            (ParallelEvalCallback if everywhere else EvalCallback)(
                make_eval_env(env_id, settings, seed=eval_seed),
                # EvalCallback counts this rank's env.step() calls
                eval_freq=lockstep.calls_per(eval_freq, settings.n_envs, mesh.get(model_parallel_size)),
                n_eval_episodes=eval_episodes,
                best_model_save_path=str(run_dir),
                log_path=str(run_dir) if comm.is_root() else None,
                verbose=verbose if comm.is_root() else 0,
                # As the zoo, keep the normalization statistics that go with the best model.
                callback_on_new_best=SaveVecNormalizeCallback(vecnormalize_path(run_dir / "best_model.zip", env_id)),
            )
        )
    return callbacks
