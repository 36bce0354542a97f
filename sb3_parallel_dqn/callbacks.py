"""Callbacks that keep SB3's behaviour when several MPI ranks train one model."""

import os

import numpy as np
from stable_baselines3.common.callbacks import (
    BaseCallback,
    CallbackList,
    ConvertCallback,
    EvalCallback,
    ProgressBarCallback,
)
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.type_aliases import MaybeCallback
from stable_baselines3.common.vec_env import sync_envs_normalization

from sb3_parallel_dqn.distributed import comm, lockstep


class GlobalProgressBarCallback(ProgressBarCallback):
    """
    SB3's progress bar, counting the env steps of all ranks (``num_timesteps`` is global in ``ParallelDQN``).

    Add it on rank 0 only: one bar per job, not one per rank.
    """

    def _on_step(self) -> bool:
        # Every rank steps ``num_envs`` envs per call, in lockstep with this one.
        self.pbar.update(lockstep.global_envs(self.training_env.num_envs, self.model._mesh))  # type: ignore[attr-defined]
        return True


def with_global_progress_bar(callback: MaybeCallback, is_root: bool) -> BaseCallback:
    """``callback`` as one ``BaseCallback`` (as SB3's ``_init_callback`` makes it), with the job's progress bar on rank 0."""
    if isinstance(callback, list):
        callback = CallbackList(callback)
    if not isinstance(callback, BaseCallback):
        callback = ConvertCallback(callback)
    return CallbackList([callback, GlobalProgressBarCallback()]) if is_root else callback


class ParallelEvalCallback(EvalCallback):
    """
    SB3's ``EvalCallback`` for a job in which every rank takes part in evaluating (a split model's forward pass takes
    its whole model group; saving a split model or a sharded optimizer gathers it, collectively). Every decision that
    gates a collective is rank 0's: rank 0 evaluates (with a split model, every rank runs the same episodes with it),
    its episode results are broadcast (one ``bcast``) and all ranks log, compare with the best and save (or not) from
    the same numbers. Episodes evaluated separately would
    differ (unseeded eval envs, or floating-point noise), the ranks would disagree on "new best", and the save --
    collective here -- would run on some ranks only: the job would hang.

    Add it on every rank, with the same ``eval_freq`` (in this rank's ``env.step()`` calls, as SB3's); only rank 0
    should get a ``log_path`` and a ``verbose`` above 0. With one process it is SB3's ``EvalCallback``.
    """

    def _on_step(self) -> bool:
        # SB3's EvalCallback._on_step (stable-baselines3 2.9), with rank 0's episodes broadcast before any decision.
        continue_training = True
        if not (self.eval_freq > 0 and self.n_calls % self.eval_freq == 0):
            return continue_training
        if self.model.get_vec_normalize_env() is not None:
            sync_envs_normalization(self.training_env, self.eval_env)
        self._is_success_buffer = []
        episode_rewards: list[float] | float = []
        episode_lengths: list[int] | float = []
        # A whole model's forward is local: only rank 0 plays the episodes. A split one needs every rank of its group.
        if comm.is_root() or getattr(self.model, "model_parallel_size", 1) > 1:
            episode_rewards, episode_lengths = evaluate_policy(
                self.model,
                self.eval_env,
                n_eval_episodes=self.n_eval_episodes,
                render=self.render,
                deterministic=self.deterministic,
                return_episode_rewards=True,
                warn=self.warn,
                callback=self._log_success_callback,
            )
        episode_rewards, episode_lengths, self._is_success_buffer = comm.broadcast_object(
            (episode_rewards, episode_lengths, self._is_success_buffer),
            what="the broadcast of rank 0's evaluation (ParallelEvalCallback: every rank must evaluate)",
        )
        if self.log_path is not None:
            self.evaluations_timesteps.append(self.num_timesteps)
            self.evaluations_results.append(episode_rewards)  # type: ignore[arg-type]
            self.evaluations_length.append(episode_lengths)  # type: ignore[arg-type]
            kwargs = {}
            if len(self._is_success_buffer) > 0:
                self.evaluations_successes.append(self._is_success_buffer)
                kwargs = dict(successes=self.evaluations_successes)
            np.savez(
                self.log_path,
                timesteps=self.evaluations_timesteps,
                results=self.evaluations_results,
                ep_lengths=self.evaluations_length,
                **kwargs,  # type: ignore[arg-type]
            )
        mean_reward, std_reward = np.mean(episode_rewards), np.std(episode_rewards)
        mean_ep_length, std_ep_length = np.mean(episode_lengths), np.std(episode_lengths)
        self.last_mean_reward = float(mean_reward)
        if self.verbose >= 1:
            print(f"Eval num_timesteps={self.num_timesteps}, episode_reward={mean_reward:.2f} +/- {std_reward:.2f}")
            print(f"Episode length: {mean_ep_length:.2f} +/- {std_ep_length:.2f}")
        self.logger.record("eval/mean_reward", float(mean_reward))
        self.logger.record("eval/mean_ep_length", mean_ep_length)
        if len(self._is_success_buffer) > 0:
            success_rate = np.mean(self._is_success_buffer)
            if self.verbose >= 1:
                print(f"Success rate: {100 * success_rate:.2f}%")
            self.logger.record("eval/success_rate", success_rate)
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self.logger.dump(self.num_timesteps)
        if mean_reward > self.best_mean_reward:
            if self.verbose >= 1:
                print("New best mean reward!")
            if self.best_model_save_path is not None:
                self.model.save(os.path.join(self.best_model_save_path, "best_model"))
            self.best_mean_reward = float(mean_reward)
            if self.callback_on_new_best is not None:
                continue_training = self.callback_on_new_best.on_step()
        if self.callback is not None:
            continue_training = continue_training and self._on_event()
        return continue_training
