"""
Every use of a private internal of Stable-Baselines3 or PyTorch, in one place, each with what it relies on.

The package subclasses SB3's ``DQN``, ``ReplayBuffer``/``NStepReplayBuffer``, ``SubprocVecEnv`` and policies and
overrides their protected extension points, as SB3's own algorithms do (:data:`OVERRIDDEN_DQN_METHODS` lists those of
``DQN`` with what each override relies on); code outside ``ParallelDQN``'s own methods reads ``DQN``'s protected state
through the accessors of :data:`PROTECTED_DQN_STATE` only. Everything else private, a name SB3 or torch do not export or a
behaviour they do not document, is reached through this module only: the :class:`Internal` entries below, each
looked up when first used. ``tests/test_compat.py`` checks every entry (that it exists, takes the arguments we pass
and behaves as relied on) and names the internal in its failure message, so that an SB3 or torch upgrade that moves
one fails there, clearly, rather than somewhere inside training. The dependency pins in ``pyproject.toml`` admit the
versions these tests passed on.

The speed paths use public torch APIs only (issue 24, item 3): a stock ``torch.optim.Adam`` over the flat parameter
buffer, ``torch.nn.utils.get_total_norm`` and ``clip_grads_with_norm_``, autograd's backward. A speed path may rest on a
private internal here only if it buys at least 20% on a workload users run (the MinAtar or Atari update, a CartPole
gradient step), measured side by side, with that measurement in its entry; none does now (one process, torch 2.13:
the hand-written MLP backward bought 21% of the CartPole gradient step, 350 vs 442 us, 19% with the step's batch
sampling; functional ``adam`` with ``_foreach_norm`` 18%, 442 vs 541 us; docs/benchmarks/public_torch_apis). The
lean Q-network forward (``engine/q_forward.py``: the layers called without ``nn.Module`` dispatch, guarded by torch's
private global-hook registry) is gone too: it bought 8% of that gradient step and 12% of CartPole env steps per
second in collection (docs/benchmarks/lean_forward), below the bar.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.buffers import NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize


class CompatibilityError(RuntimeError):
    """An internal of SB3 or torch that this package relies on moved or changed."""


@dataclasses.dataclass(frozen=True)
class Internal:
    """
    A private name of SB3 or torch: ``"module:attribute"``, and what the package relies on it for.

    :param path: where it lives, e.g. ``"stable_baselines3.common.vec_env.subproc_vec_env:_worker"``
    :param relies_on: what we use it for and assume about it
    """

    path: str
    relies_on: str

    def resolve(self) -> Any:
        """The object, or a :class:`CompatibilityError` naming it and what it was for."""
        return _resolve(self)

    def error(self, problem: str) -> CompatibilityError:
        import stable_baselines3

        return CompatibilityError(
            f"{self.path} {problem}. sb3_parallel_dqn relies on it for: {self.relies_on}. With stable-baselines3 "
            f"{stable_baselines3.__version__} and torch {th.__version__} it needs an update in sb3_parallel_dqn/compat.py."
        )


@functools.cache
def _resolve(internal: Internal) -> Any:
    module_name, _, attribute = internal.path.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
        return obj
    except (ImportError, AttributeError) as error:
        raise internal.error(f"is gone ({type(error).__name__}: {error})") from None


SUBPROC_WORKER = Internal(
    "stable_baselines3.common.vec_env.subproc_vec_env:_worker",
    "the env worker loop of SubprocVecEnv, called as _worker(remote, parent_remote, env_fn_wrapper) in "
    "ParallelSubprocVecEnv's own worker, which adds a last message with the traceback when the env raises",
)
CLOUDPICKLE_WRAPPER = Internal(
    "stable_baselines3.common.vec_env.base_vec_env:CloudpickleWrapper",
    "CloudpickleWrapper(env_fn): what SubprocVecEnv sends its workers, as the third argument of _worker",
)
PATCH_ENV = Internal(
    "stable_baselines3.common.vec_env.patch_gym:_patch_env",
    "make_vec_env's conversion of a gym/gymnasium env returned by a callable, copied by make_parallel_vec_env",
)
GET_SAMPLES = Internal(
    "stable_baselines3.common.buffers:ReplayBuffer._get_samples",
    "ReplayBuffer/NStepReplayBuffer._get_samples(batch_inds, env) computes every row on its own (gathers, n-step "
    "returns) and, with one env, draws env indices by randint(0, 1), which consumes no random numbers: batched "
    "sampling calls it once for all the gradient steps of a train() call and gets sample()'s batches",
)
N_STEPS_IGNORED_WARNING = Internal(
    "stable_baselines3.dqn.dqn:DQN._setup_model",
    "the text of the warning that _setup_model gives when n_steps > 1 and a custom replay_buffer_class is set "
    "('`n_steps=N` is ignored because a custom `replay_buffer_class`'), wrong when replay_buffer_kwargs carry n_steps; "
    "SB3 2.8 ignores n_steps there without a warning, so silencing it is a no-op",
)
N_STEPS_IGNORED_MESSAGE = r"`n_steps=\d+` is ignored because a custom `replay_buffer_class`"
OBSERVATION_GATHERS = Internal(
    "stable_baselines3.common.buffers:NStepReplayBuffer._get_samples",
    "ReplayBuffer/NStepReplayBuffer._get_samples reach the stored observations only as "
    "self.observations[rows, envs(, :)] and self.next_observations[rows, envs(, :)] with integer arrays: "
    "FrameReplayBuffer puts objects there that rebuild the stacks, so that SB3's own n-step and prioritized sampling "
    "code runs on frames stored once",
)

#: Every internal above, for tests/test_compat.py.
INTERNALS = (
    SUBPROC_WORKER,
    CLOUDPICKLE_WRAPPER,
    PATCH_ENV,
    GET_SAMPLES,
    N_STEPS_IGNORED_WARNING,
    OBSERVATION_GATHERS,
)

#: The protected methods of SB3's ``DQN`` (and its bases) that ``ParallelDQN`` overrides, and what each override
#: relies on. tests/test_compat.py checks that each still exists with the same parameters and, where stated, order.
OVERRIDDEN_DQN_METHODS = {
    "_setup_model": "builds policy, optimizer and replay buffer from the attributes set in __init__; load() calls it "
    "again after BaseAlgorithm.load built the object with _init_setup_model=False",
    "_wrap_env": "static, wraps every env given to the constructor, load() and set_env() (Monitor, DummyVecEnv)",
    "set_random_seed": "seeds random, numpy, torch, the action space and (VecEnv.seed) the envs at the next reset",
    "_on_step": "called by collect_rollouts after each env.step(), after num_timesteps grew by n_envs; updates the "
    "exploration rate and, every target_update_interval calls, the target network",
    "_sample_action": "called by collect_rollouts once per env step, before env.step() and before num_timesteps grows "
    "by n_envs, with the observation in _last_obs",
    "collect_rollouts": "returns RolloutReturn(episode_timesteps, n_episodes, continue_training); calls "
    "callback.on_rollout_start/on_step/on_rollout_end and _update_info_buffer (ep_info_buffer, ep_success_buffer)",
    "dump_logs": "logs the means of ep_info_buffer and ep_success_buffer, and _episode_num as time/episodes",
    "train": "called by learn() after each rollout once num_timesteps > learning_starts",
    "_setup_learn": "resets the envs when reset_num_timesteps or _last_obs is None; rebuilds ep_info_buffer and "
    "ep_success_buffer when they are None or reset_num_timesteps",
    "_init_callback": "turns callback (None, list, function) into one BaseCallback, adds the progress bar, and calls "
    "init_callback(model)",
    "_excluded_save_params": "names the attributes that save() leaves out of the data member",
}

#: The protected state of SB3's ``DQN`` (set by ``BaseAlgorithm``/``OffPolicyAlgorithm``) that code outside
#: ``ParallelDQN``'s own methods reads or writes, only through the accessors below, and what each holds.
#: tests/test_compat.py runs SB3's ``DQN`` and checks each against this.
PROTECTED_DQN_STATE = {
    "_total_timesteps": "the budget of the current learn() (num_timesteps included when reset_num_timesteps=False)",
    "_update_current_progress_remaining": "method (num_timesteps, total_timesteps) that sets "
    "_current_progress_remaining to 1 - num_timesteps / total_timesteps",
    "_current_progress_remaining": "what the schedules (learning rate, exploration) were last evaluated at",
    "_n_calls": "the _on_step calls made: the target network is updated when it reaches a multiple of "
    "target_update_interval // n_envs",
    "_n_updates": "the gradient steps made by train()",
    "_last_obs": "the observation that collect_rollouts chooses the next actions for",
    "_episode_num": "the episodes finished, logged as time/episodes",
}


def get_samples(replay_buffer: ReplayBuffer, batch_inds: np.ndarray, env: VecNormalize | None) -> ReplayBufferSamples:
    """``replay_buffer._get_samples(batch_inds, env)``: the transitions of the given rows (see :data:`GET_SAMPLES`)."""
    return replay_buffer._get_samples(batch_inds, env=env)  # type: ignore[return-value]


def subproc_worker() -> Callable[..., None]:
    """SB3's ``SubprocVecEnv`` worker loop (see :data:`SUBPROC_WORKER`)."""
    return SUBPROC_WORKER.resolve()


def cloudpickle_wrapper(env_fn: Callable[[], Any]) -> Any:
    """``CloudpickleWrapper(env_fn)``, as ``SubprocVecEnv`` sends it to its workers."""
    return CLOUDPICKLE_WRAPPER.resolve()(env_fn)


def patch_env(env: Any) -> Any:
    """``make_vec_env``'s patch of an env returned by a callable (gym 0.21/0.26 to gymnasium)."""
    return PATCH_ENV.resolve()(env)


@contextlib.contextmanager
def n_steps_warning_silenced(
    replay_buffer_class: type[ReplayBuffer] | None, replay_buffer_kwargs: dict[str, Any], n_steps: int
) -> Iterator[None]:
    """
    Within the block, SB3's ``DQN._setup_model`` does not warn that ``n_steps`` is ignored because of a custom
    replay buffer class when that class computes n-step returns and its keyword arguments carry the model's
    ``n_steps``: then nothing is ignored (see :data:`N_STEPS_IGNORED_WARNING`).
    """
    with warnings.catch_warnings():
        if (
            replay_buffer_class is not None
            and issubclass(replay_buffer_class, NStepReplayBuffer)
            and replay_buffer_kwargs.get("n_steps") == n_steps
        ):
            N_STEPS_IGNORED_WARNING.resolve()
            warnings.filterwarnings("ignore", message=N_STEPS_IGNORED_MESSAGE)
        yield


def total_timesteps(model: Any) -> int:
    """The budget of ``model``'s current (or last) ``learn()`` (see :data:`PROTECTED_DQN_STATE`)."""
    return int(model._total_timesteps)


def refresh_progress(model: Any) -> float:
    """Recompute ``model``'s progress remaining from its ``num_timesteps``, as SB3 does after each step; return it."""
    model._update_current_progress_remaining(model.num_timesteps, model._total_timesteps)
    return float(model._current_progress_remaining)


def progress_remaining(model: Any) -> float:
    """Where ``model``'s schedules were last evaluated: 1 at the start of ``learn()``, 0 at its end."""
    return float(model._current_progress_remaining)


def target_update_calls(model: Any) -> int:
    """The ``_on_step`` calls that ``model``'s target updates count (see :data:`PROTECTED_DQN_STATE`)."""
    return int(model._n_calls)


def set_target_update_calls(model: Any, calls: int) -> None:
    """Set the counter of :func:`target_update_calls`."""
    model._n_calls = calls


def count_episodes(model: Any, n_episodes: int) -> None:
    """Add ``n_episodes`` to the episodes ``model`` logs as finished (``time/episodes``)."""
    model._episode_num += n_episodes


def n_updates(model: Any) -> int:
    """The gradient steps ``model`` made."""
    return int(model._n_updates)


def last_observation(model: Any) -> Any:
    """The observation ``model``'s next actions are chosen for (an array, a dict of arrays, or None before learn)."""
    return model._last_obs
