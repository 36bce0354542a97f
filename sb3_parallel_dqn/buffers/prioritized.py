"""
Prioritized experience replay (Schaul et al. 2016, https://arxiv.org/abs/1511.05952), proportional variant.

:class:`PrioritizedReplayBuffer` is an SB3 replay buffer: pass it as ``replay_buffer_class`` (or
``replay_buffer_class: PrioritizedReplayBuffer`` in a zoo YAML entry). ``ParallelDQN`` then samples it with
importance weights, weights the TD loss with them and writes the new priorities back after each gradient step.

Under MPI every rank keeps its own buffer (Ape-X style sharding, https://arxiv.org/abs/1803.00933) and samples its
own batch from it. Each rank draws the same number of samples, so a transition's probability in the combined batch
is its rank-local probability divided by the number of ranks and, with shards of equal size, its importance weight
``(N * P(i)) ** -beta`` is the rank-local one. ``ParallelDQN`` divides the weights of every rank by the *global*
maximum weight of the step (one small ``Allreduce``), so that the averaged gradient weighs every sample of every
rank on the same scale.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import HerReplayBuffer
from stable_baselines3.common.buffers import DictReplayBuffer, NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from sb3_parallel_dqn import compat
from sb3_parallel_dqn.buffers.sum_tree import SumTree


class PrioritizedReplayBuffer(NStepReplayBuffer):
    """
    Replay buffer that samples transitions in proportion to ``priority ** alpha``, with n-step returns when
    ``n_steps > 1`` (as SB3's ``NStepReplayBuffer``; ``ParallelDQN`` passes its own ``n_steps`` and ``gamma``).

    New transitions get the largest priority seen so far, so that each is replayed at least about once; a sampled
    transition's priority becomes ``|TD error| + epsilon`` after the gradient step that used it.

    :param buffer_size: Max number of element in the buffer
    :param observation_space: Observation space (not a ``Dict`` space)
    :param action_space: Action space
    :param device: PyTorch device
    :param n_envs: Number of parallel environments
    :param optimize_memory_usage: Enable a memory efficient variant of the replay buffer (only with ``n_steps=1``,
        as in SB3). Needs ``handle_timeout_termination=False``.
    :param handle_timeout_termination: Handle timeout termination (due to timelimit)
        separately and treat the task as infinite horizon task.
    :param n_steps: Number of steps to accumulate rewards for n-step returns (1: one-step transitions)
    :param gamma: Discount factor for future rewards (used when ``n_steps > 1``)
    :param alpha: How much prioritization is used (0: uniform sampling, 1: fully proportional)
    :param beta: Initial importance-sampling exponent, annealed linearly to ``final_beta`` over training
        (``ParallelDQN`` calls :meth:`set_progress` with the global training progress)
    :param final_beta: Importance-sampling exponent at the end of training (1: full correction)
    :param epsilon: Added to every absolute TD error, so that no transition's priority is 0
    """

    # ParallelDQN hands this class its own n_steps and gamma (see with_model_n_steps)
    takes_model_n_steps = True

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        n_steps: int = 1,
        gamma: float = 0.99,
        alpha: float = 0.6,
        beta: float = 0.4,
        final_beta: float = 1.0,
        epsilon: float = 1e-6,
    ) -> None:
        check_prioritized_arguments(observation_space, optimize_memory_usage, n_steps, alpha, beta, final_beta, epsilon)
        # NStepReplayBuffer.__init__ refuses optimize_memory_usage even for n_steps=1, where ReplayBuffer's own
        # sampling applies: set up the storage as ReplayBuffer does, and the n-step settings by hand.
        ReplayBuffer.__init__(
            self,
            buffer_size,
            observation_space,
            action_space,
            device=device,
            n_envs=n_envs,
            optimize_memory_usage=optimize_memory_usage,
            handle_timeout_termination=handle_timeout_termination,
        )
        self.n_steps = n_steps
        self.gamma = gamma
        self._init_priorities(alpha, beta, final_beta, epsilon)

    def _init_priorities(self, alpha: float, beta: float, final_beta: float, epsilon: float) -> None:
        """The prioritized part, once the storage is set up (here, or by a subclass with storage of its own)."""
        self.alpha = alpha
        self.initial_beta = self.beta = beta
        self.final_beta = final_beta
        self.epsilon = epsilon
        # Leaf pos * n_envs + e holds the priority ** alpha of the transition in row pos of env e.
        self.tree = SumTree(self.buffer_size * self.n_envs)
        self.max_priority = 1.0

    def set_progress(self, progress_remaining: float) -> None:
        """Anneal beta linearly from its initial value (progress 1) to ``final_beta`` (progress 0)."""
        # SB3's progress overshoots past 0 by up to one rollout at the end of training.
        progress_remaining = min(max(progress_remaining, 0.0), 1.0)
        self.beta = self.final_beta + (self.initial_beta - self.final_beta) * progress_remaining

    def add(self, *args: Any, **kwargs: Any) -> None:
        row = self.pos
        super().add(*args, **kwargs)
        self._set_row_priority(row, self.max_priority**self.alpha)
        if self.optimize_memory_usage and self.full:
            # The next row's transition lost its next observation to this one's (both share one array): it must
            # not be drawn until it is overwritten (SB3's sample() skips pos for the same reason).
            self._set_row_priority(self.pos, 0.0)

    def _set_row_priority(self, row: int, priority: float) -> None:
        if self.n_envs == 1:
            self.tree.update(row, priority)
        else:
            self.tree.update(row * self.n_envs + np.arange(self.n_envs), priority)

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
        """A prioritized batch, without its importance weights (see :meth:`sample_prioritized`)."""
        return self.sample_prioritized(batch_size, env)[0]

    def sample_prioritized(
        self, batch_size: int, env: VecNormalize | None = None
    ) -> tuple[ReplayBufferSamples, np.ndarray, np.ndarray]:
        """
        Draw ``batch_size`` transitions in proportion to their priorities.

        :return: the batch; each sample's importance weight ``(N * P(i)) ** -beta``, not normalised (divide by the
            largest weight, over all ranks under MPI); and the samples' leaf indices, for :meth:`update_priorities`
        """
        leaves = self.tree.sample(batch_size)
        if self.n_envs > 1:
            # Grouped by env (see _get_samples_of_envs); the order of a batch is irrelevant to the loss.
            leaves = leaves[np.argsort(leaves % self.n_envs, kind="stable")]
        probabilities = self.tree.priorities[leaves] / self.tree.total
        weights = (self.size() * self.n_envs * probabilities) ** -self.beta
        rows, env_indices = np.divmod(leaves, self.n_envs)
        return self._get_samples_of_envs(rows, env_indices, env), weights, leaves

    def update_priorities(self, leaves: np.ndarray, td_errors: np.ndarray) -> None:
        """Set the priorities of the sampled ``leaves`` to ``|td_errors| + epsilon`` (raised to alpha)."""
        priorities = np.abs(np.asarray(td_errors, dtype=np.float64).reshape(-1)) + self.epsilon
        self.max_priority = max(self.max_priority, float(priorities.max()))
        self.tree.update(leaves, priorities**self.alpha)

    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None) -> ReplayBufferSamples:
        # Rows only, as SB3's sample() passes them: SB3 draws the env of each row itself.
        if self.n_steps > 1:
            return super()._get_samples(batch_inds, env)
        return ReplayBuffer._get_samples(self, batch_inds, env)

    def _get_samples_of_envs(self, rows: np.ndarray, env_indices: np.ndarray, env: VecNormalize | None) -> ReplayBufferSamples:
        """
        SB3's ``_get_samples`` for given (row, env) pairs, grouped by env. SB3 draws the env index of each row at
        random; with one env it draws from ``randint(0, 1)``, which is always 0 and consumes no random numbers. So
        each env's rows are gathered by SB3's own code on a one-env view of the storage (numpy views, no copies).
        """
        if self.n_envs == 1:
            return self._get_samples(rows, env)
        parts = []
        for env_index in np.unique(env_indices):
            with self._one_env_view(int(env_index)):
                parts.append(self._get_samples(rows[env_indices == env_index], env))
        return ReplayBufferSamples(
            *(None if tensors[0] is None else th.cat(tensors) for tensors in zip(*parts, strict=True))  # type: ignore[arg-type]
        )

    @contextlib.contextmanager
    def _one_env_view(self, env_index: int) -> Iterator[None]:
        """Within the block, the storage arrays are views of env ``env_index`` alone and ``n_envs`` is 1."""
        # With optimize_memory_usage SB3 never creates next_observations (the next row's observation is the next one).
        saved = {name: getattr(self, name) for name in _PER_ENV_ARRAYS if hasattr(self, name)}
        n_envs = self.n_envs
        try:
            for name, array in saved.items():
                setattr(self, name, array[:, env_index : env_index + 1])
            self.n_envs = 1
            yield
        finally:
            for name, array in saved.items():
                setattr(self, name, array)
            self.n_envs = n_envs


# The arrays of shape (buffer_size, n_envs, ...) that SB3's _get_samples indexes by env.
_PER_ENV_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def check_prioritized_arguments(
    observation_space: spaces.Space,
    optimize_memory_usage: bool,
    n_steps: int,
    alpha: float,
    beta: float,
    final_beta: float,
    epsilon: float,
) -> None:
    """Refuse what :class:`PrioritizedReplayBuffer` cannot do, before any memory is allocated."""
    if isinstance(observation_space, spaces.Dict):
        raise ValueError("PrioritizedReplayBuffer stores array observations; Dict observation spaces are not supported")
    if optimize_memory_usage and n_steps > 1:
        raise ValueError("optimize_memory_usage only works with n_steps=1 (as SB3's NStepReplayBuffer)")
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, not {alpha}")
    if not (0 <= beta <= 1 and 0 <= final_beta <= 1):
        raise ValueError(f"beta and final_beta must lie in [0, 1], not {beta} and {final_beta}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, not {epsilon}")


def truncate_last_transitions(replay_buffer: ReplayBuffer | None) -> None:
    """
    Mark the newest stored transition of every env as the end of its episode (a truncation), because collection is
    about to restart from a fresh ``reset()`` (a new ``learn`` with ``reset_num_timesteps=True``, or the first
    ``learn`` after ``load``): otherwise n-step returns (``NStepReplayBuffer``, :class:`PrioritizedReplayBuffer`)
    chain that transition into the new episode's first steps.

    A truncation, not a termination: the transition keeps its own next observation to bootstrap from (1-step targets
    are unchanged), and n-step returns stop there. With ``optimize_memory_usage`` that next observation is the row
    the new episode's first observation overwrites, so the transition becomes terminal instead, as SB3 does on
    ``reset_num_timesteps=True`` (https://github.com/DLR-RM/stable-baselines3/issues/46). ``HerReplayBuffer``
    tracks episodes itself and is left alone.
    """
    if not isinstance(replay_buffer, ReplayBuffer) or isinstance(replay_buffer, HerReplayBuffer):
        return  # none, or an actor's outbox (the asynchronous mode): the learner's buffer holds the transitions
    if replay_buffer.pos == 0 and not replay_buffer.full:
        return  # empty
    last = (replay_buffer.pos - 1) % replay_buffer.buffer_size
    if replay_buffer.optimize_memory_usage:
        replay_buffer.dones[last] = 1.0
    else:
        replay_buffer.timeouts[last] = np.maximum(replay_buffer.timeouts[last], 1.0 - replay_buffer.dones[last])


def with_model_n_steps(
    replay_buffer_class: type[ReplayBuffer] | None, replay_buffer_kwargs: dict[str, Any], n_steps: int, gamma: float
) -> dict[str, Any]:
    """
    The keyword arguments for the replay buffer: a :class:`PrioritizedReplayBuffer` or a
    :class:`~sb3_parallel_dqn.FrameReplayBuffer` (``takes_model_n_steps``) computes n-step returns itself
    and gets the model's ``n_steps`` and ``gamma`` unless ``replay_buffer_kwargs`` set them (SB3 only hands them to
    the buffer it picks itself), in a new dict (the user's own must not change).
    """
    if getattr(replay_buffer_class, "takes_model_n_steps", False):
        return {"n_steps": n_steps, "gamma": gamma, **replay_buffer_kwargs}
    return replay_buffer_kwargs


# ---------------------------------------------------------------------------------------------------------------------
# The replay buffer follows the model's settings, also after load() and load_replay_buffer() (issue 23, item 3)
# ---------------------------------------------------------------------------------------------------------------------


def requested_replay_buffer(
    replay_buffer_class: type[ReplayBuffer] | None, replay_buffer_kwargs: dict[str, Any], setup: dict[str, Any] | None
) -> tuple[type[ReplayBuffer] | None, dict[str, Any]]:
    """
    The replay buffer class and keyword arguments to set the model's buffer up from: what the user asked for.

    SB3's ``_setup_model`` writes what it resolved back into the model (``replay_buffer_class=None`` becomes
    ``NStepReplayBuffer`` when ``n_steps > 1``, whose kwargs get the model's ``n_steps`` and ``gamma``), and ``save``
    stores that: ``load(path, n_steps=1, gamma=0.9)`` then set up an ``NStepReplayBuffer`` with the saved
    ``n_steps=5, gamma=0.99``. ``setup`` (:func:`replay_buffer_setup`, saved with the model) says what the last set-up
    resolved from which request: a class or kwargs still equal to the resolved ones were not given to ``load`` and
    go back to the request, so that the buffer follows the model's current ``n_steps`` and ``gamma``; values given to
    ``load`` are the new request. Without ``setup`` (a new model, or a file saved before it existed) the values are
    the request.
    """
    if setup is None:
        return replay_buffer_class, replay_buffer_kwargs
    if replay_buffer_class is setup["class"]:
        replay_buffer_class = setup["requested_class"]
    with contextlib.suppress(Exception):  # kwargs that cannot be compared are the user's own
        if replay_buffer_kwargs == setup["kwargs"]:
            replay_buffer_kwargs = dict(setup["requested_kwargs"])
    return replay_buffer_class, replay_buffer_kwargs


@contextlib.contextmanager
def replay_buffer_as_requested(model: Any) -> Iterator[None]:
    """
    Around SB3's ``_setup_model`` (``model`` a DQN): set the model's replay-buffer class and keyword arguments from
    what was asked (:func:`requested_replay_buffer`, so that ``load(path, n_steps=...)`` applies) with the model's
    n-step settings (:func:`with_model_n_steps`), without SB3's warning that they are ignored (they are not: see
    ``compat.n_steps_warning_silenced``); afterwards record the request next to what SB3 resolved it to
    (``model._replay_buffer_setup``, saved with the model) for the next ``load()``.
    """
    setup = getattr(model, "_replay_buffer_setup", None)
    requested, requested_kwargs = requested_replay_buffer(model.replay_buffer_class, model.replay_buffer_kwargs, setup)
    kwargs = with_model_n_steps(requested, dict(requested_kwargs), model.n_steps, model.gamma)  # SB3 updates it
    model.replay_buffer_class, model.replay_buffer_kwargs = requested, kwargs
    with compat.n_steps_warning_silenced(requested, kwargs, model.n_steps):
        yield
    model._replay_buffer_setup = replay_buffer_setup(
        requested, requested_kwargs, model.replay_buffer_class, model.replay_buffer_kwargs
    )


def replay_buffer_setup(
    requested_class: type[ReplayBuffer] | None,
    requested_kwargs: dict[str, Any],
    replay_buffer_class: type[ReplayBuffer] | None,
    replay_buffer_kwargs: dict[str, Any],
) -> dict[str, Any]:
    """What :func:`requested_replay_buffer` needs to know of a set-up: the request and what SB3 resolved it to."""
    return {
        "requested_class": requested_class,
        "requested_kwargs": dict(requested_kwargs),
        "class": replay_buffer_class,
        "kwargs": dict(replay_buffer_kwargs),
    }


_N_STEP_SETTINGS = ("n_steps", "gamma")
_PRIORITY_SETTINGS = ("alpha", "initial_beta", "final_beta", "epsilon")
_PRIORITY_STATE = (*_PRIORITY_SETTINGS, "beta", "tree", "max_priority")


def _storage_of(buffer_class: type) -> str | None:
    """How a replay buffer class of this package or SB3 stores transitions (None: unknown, never converted)."""
    known = _known_classes()
    if buffer_class in known[:3]:
        return "arrays"  # ReplayBuffer's arrays; n-step returns and priorities are computed on top of them
    if buffer_class in known[3:]:
        return "frames"
    return None


# The modules of release 0.1.0a0 whose classes moved here (the old paths stay importable, for unpickling).
MOVED_MODULES = {
    "sb3_parallel_dqn.prioritized_replay": "sb3_parallel_dqn.buffers.prioritized",
    "sb3_parallel_dqn.frame_replay": "sb3_parallel_dqn.buffers.frame",
    "sb3_parallel_dqn.sum_tree": "sb3_parallel_dqn.buffers.sum_tree",
}


def check_class_convertible(saved: tuple[str, str] | None, requested: type[ReplayBuffer] | None, source: str) -> None:
    """
    Refuse, before anything is built, a saved replay buffer of class ``saved`` (module, name: see
    :func:`sb3_parallel_dqn.io.checkpoints.pickled_class`) that :func:`fit_loaded_buffer` could not convert to the
    ``replay_buffer_class`` asked for (None: SB3's pick, ``ReplayBuffer`` or ``NStepReplayBuffer``). Nothing is
    imported: classes are compared by name. An unknown file (``saved`` None) is left to the load.

    :raises ConfigError: with the key ``replay_buffer_class``
    """
    from sb3_parallel_dqn.validation import ConfigError

    if saved is None:
        return
    saved = (MOVED_MODULES.get(saved[0], saved[0]), saved[1])  # a shard of 0.1.0a0 names the old module
    target = ReplayBuffer if requested is None else requested
    if saved == (target.__module__, target.__qualname__):
        return
    if requested is None and saved == (DictReplayBuffer.__module__, DictReplayBuffer.__qualname__):
        return  # SB3's pick for Dict observations
    by_name = {(cls.__module__, cls.__qualname__): cls for cls in _known_classes()}
    saved_class = by_name.get(saved)
    storage = None if saved_class is None else _storage_of(saved_class)
    if storage is None or storage != _storage_of(target):
        raise ConfigError(
            f"the replay buffer in {source} is a {saved[1]}, whose transitions cannot be converted to "
            f"{target.__name__}: resume with replay_buffer_class {saved[1]}, or move the replay buffer files away",
            key="replay_buffer_class",
        )


def _known_classes() -> tuple[type[ReplayBuffer], ...]:
    from sb3_parallel_dqn.buffers.frame import FrameReplayBuffer, PrioritizedFrameReplayBuffer

    return ReplayBuffer, NStepReplayBuffer, PrioritizedReplayBuffer, FrameReplayBuffer, PrioritizedFrameReplayBuffer


def _describe(buffer: ReplayBuffer) -> str:
    settings = [
        f"{name}={getattr(buffer, name)}" for name in (*_N_STEP_SETTINGS, *_PRIORITY_SETTINGS) if hasattr(buffer, name)
    ]
    return f"{type(buffer).__name__}({', '.join(settings)})"


def fitted_replay_buffer(model: Any, built: ReplayBuffer | None, source: str) -> ReplayBuffer:
    """
    ``model.replay_buffer`` as ``load_replay_buffer`` just read it from ``source``, fitted to the model's settings
    (:func:`fit_loaded_buffer`; ``built`` is the buffer the model had set up from them, which the model keeps when
    the loaded one is refused); says what was converted when ``model.verbose >= 1``.
    """
    loaded, model.replay_buffer = model.replay_buffer, built
    fitted, converted = fit_loaded_buffer(loaded, built, source)
    if converted is not None and model.verbose >= 1:
        print(converted)
    return fitted


def fit_loaded_buffer(loaded: ReplayBuffer, model_buffer: ReplayBuffer | None, source: str) -> tuple[ReplayBuffer, str | None]:
    """
    The replay buffer that ``load_replay_buffer`` read from ``source``, made to follow the model's replay-buffer
    settings, which ``model_buffer`` holds (the buffer the model set up from them): a resumed run trains with the
    class, ``n_steps``, ``gamma`` and prioritized-replay settings it reports, never the saved buffer's.

    Every buffer here stores the raw one-step transitions and computes n-step returns (``n_steps``, ``gamma``) and
    prioritized sampling at sample time, so a buffer converts to another class of the same storage
    (``ReplayBuffer``, ``NStepReplayBuffer`` and :class:`PrioritizedReplayBuffer`; or ``FrameReplayBuffer`` and
    ``PrioritizedFrameReplayBuffer``) in place, without a copy: n-step settings are set; a buffer that becomes
    prioritized gives every stored transition the priority a new one gets (the largest so far, 1); one that stays
    prioritized keeps its priorities (re-weighted for a new ``alpha``); one that stops being prioritized drops them.
    What cannot be converted is refused, naming the setting: another storage, an unknown class, another
    ``optimize_memory_usage`` or ``frame_stack``. The buffer's size and everything else are the saved buffer's, as
    in SB3.

    :return: the buffer, and a line that says what was converted (None when nothing was)
    :raises ConfigError: naming the setting that cannot be applied to the saved transitions (``loaded`` is unchanged)
    """
    from sb3_parallel_dqn.validation import ConfigError

    if model_buffer is None or loaded is model_buffer:
        return loaded, None
    target = type(model_buffer)
    wanted = [name for name in _N_STEP_SETTINGS if isinstance(model_buffer, NStepReplayBuffer)]
    wanted += [name for name in _PRIORITY_SETTINGS if isinstance(model_buffer, PrioritizedReplayBuffer)]
    differing = [name for name in wanted if getattr(loaded, name, None) != getattr(model_buffer, name)]
    keep = f"or move the replay buffer files away (the run then starts with an empty {target.__name__})"
    storage = _storage_of(type(loaded))
    if type(loaded) is not target and (storage is None or storage != _storage_of(target)):
        raise ConfigError(
            f"the replay buffer in {source} is a {type(loaded).__name__}, whose transitions cannot be converted to the "
            f"model's {target.__name__}: resume with replay_buffer_class {type(loaded).__name__}, {keep}",
            key="replay_buffer_class",
        )
    for name in ("optimize_memory_usage", "frame_stack"):
        if getattr(loaded, name, None) != getattr(model_buffer, name, None):
            raise ConfigError(
                f"the replay buffer in {source} was saved with {name}={getattr(loaded, name, None)}, the model has "
                f"{getattr(model_buffer, name, None)}: its transitions are stored for that setting; resume with "
                f"{name}={getattr(loaded, name, None)}, {keep}",
                key=name,
            )
    if type(loaded) is target and not differing:
        return loaded, None
    before = _describe(loaded)
    prioritized = isinstance(loaded, PrioritizedReplayBuffer)
    old_alpha = getattr(loaded, "alpha", None)
    if type(loaded) is not target:
        loaded.__class__ = target  # same storage: only the sampling differs (see above)
        stale = [*([] if issubclass(target, NStepReplayBuffer) else _N_STEP_SETTINGS)]
        stale += [] if issubclass(target, PrioritizedReplayBuffer) else list(_PRIORITY_STATE)
        for name in stale:
            loaded.__dict__.pop(name, None)
    if isinstance(loaded, NStepReplayBuffer):
        assert isinstance(model_buffer, NStepReplayBuffer)
        loaded.n_steps, loaded.gamma = model_buffer.n_steps, model_buffer.gamma
    if isinstance(loaded, PrioritizedReplayBuffer):
        assert isinstance(model_buffer, PrioritizedReplayBuffer)
        if prioritized:
            _reweigh_priorities(loaded, old_alpha, model_buffer.alpha)
            loaded.initial_beta, loaded.final_beta = model_buffer.initial_beta, model_buffer.final_beta
            loaded.epsilon = model_buffer.epsilon  # beta itself is annealed again from these before each train()
        else:
            loaded._init_priorities(
                model_buffer.alpha, model_buffer.initial_beta, model_buffer.final_beta, model_buffer.epsilon
            )
            rows = loaded.buffer_size if loaded.full else loaded.pos
            loaded.tree.update(np.arange(rows * loaded.n_envs), loaded.max_priority**loaded.alpha)
            if loaded.optimize_memory_usage and loaded.full:
                loaded._set_row_priority(loaded.pos, 0.0)  # as add() leaves it: the row lost its next observation
    return loaded, f"Replay buffer {source}: saved as {before}, converted to the model's {_describe(loaded)}"


def _reweigh_priorities(buffer: PrioritizedReplayBuffer, old_alpha: float | None, alpha: float) -> None:
    """The tree holds ``priority ** old_alpha``: make it ``priority ** alpha`` (with old_alpha 0 they are lost: 1)."""
    if old_alpha == alpha:
        return
    leaves = np.array(buffer.tree.priorities)
    stored = leaves > 0  # 0: never stored, or not to be drawn (optimize_memory_usage)
    if old_alpha:
        leaves[stored] = leaves[stored] ** (alpha / old_alpha)
    else:
        leaves[stored] = buffer.max_priority**alpha
    buffer.alpha = alpha
    buffer.tree.update(np.arange(leaves.size), leaves)
