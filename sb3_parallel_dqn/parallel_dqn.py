import io
import math
import os
import pathlib
import signal
import warnings
from collections import deque
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import DQN
from stable_baselines3.common.buffers import NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ConvertCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import (
    GymEnv,
    MaybeCallback,
    ReplayBufferSamples,
    RolloutReturn,
    Schedule,
    TrainFreq,
    TrainFrequencyUnit,
)
from stable_baselines3.common.utils import polyak_update
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv
from stable_baselines3.dqn.policies import CnnPolicy, DQNPolicy, MlpPolicy, MultiInputPolicy
from torch.nn import functional as F

from sb3_parallel_dqn import interrupt, mpi_tools
from sb3_parallel_dqn.callbacks import GlobalProgressBarCallback
from sb3_parallel_dqn.checkpoints import atomic_path, rank_path
from sb3_parallel_dqn.env_util import make_parallel_vec_env
from sb3_parallel_dqn.flat_update import FlatUpdate
from sb3_parallel_dqn.hyperparams import check_model_kwargs
from sb3_parallel_dqn.mpi_pytorch import GradientAverager, broadcast_module_, broadcast_optimizer_, check_synced
from sb3_parallel_dqn.policies import DQNPolicy as DQNPolicyWithDueling
from sb3_parallel_dqn.policies import dueling_policy_class
from sb3_parallel_dqn.prioritized_replay import PrioritizedReplayBuffer, truncate_last_transitions
from sb3_parallel_dqn.q_forward import QForward, q_forward
from sb3_parallel_dqn.replay_sampling import sample_batches

SelfParallelDQN = TypeVar("SelfParallelDQN", bound="ParallelDQN")


class LockstepError(ValueError):
    """A setting differs across MPI ranks (or cannot be kept in lockstep), which would deadlock the job."""


class NonFiniteError(FloatingPointError):
    """The loss or the (averaged) gradients of a gradient update are NaN or infinite."""


class UnsupportedSpaceError(ValueError):
    """The env's action space is not one DQN can act in (``Discrete``)."""


class ParallelDQN(DQN):
    """
    Parallel Deep Q-Network: SB3's DQN with parallel rollouts and MPI data-parallel gradient updates.

    Paper: https://arxiv.org/abs/1312.5602, https://www.nature.com/articles/nature14236
    Double DQN (``double_q=True``): https://arxiv.org/abs/1509.06461
    Dueling head (``policy_kwargs=dict(dueling=True)``): https://arxiv.org/abs/1511.06581
    Prioritized replay (``replay_buffer_class=PrioritizedReplayBuffer``): https://arxiv.org/abs/1511.05952
    Data parallelism as in synchronous SGD: https://arxiv.org/abs/1604.00981
    Default hyperparameters are SB3's DQN defaults.

    Launched with ``mpirun -np W``, every rank steps its own ``n_envs`` environments into its own replay buffer,
    computes gradients on its own samples, and averages them with one ``Allreduce`` per gradient step (before
    clipping), so all ranks hold bit-identical weights. Without ``mpirun`` it is SB3's ``DQN`` (same seed, same
    weights) plus the ``n_envs`` and threading conveniences.

    Under MPI, construct the model and call ``learn`` on every rank. The constructor and every ``learn`` give all
    ranks rank 0's weights (``learn`` also its optimizer state); ``load`` and ``set_parameters`` stay local, so
    rank 0 alone may load a model to evaluate it. Only rank 0 prints, logs and writes model files.

    Scaling semantics with W ranks:

    - ``total_timesteps`` (in ``learn``), ``learning_starts``, ``num_timesteps`` and ``target_update_interval``
      count *global* transitions, summed over ranks; exploration and learning-rate schedules advance on global
      progress, so all ranks agree;
    - ``batch_size`` and ``buffer_size`` are *per rank*: the effective batch is ``W * batch_size``;
    - ``train_freq`` counts each rank's own ``env.step()`` calls and ``gradient_steps`` is per rollout, as in SB3.
      For the same global budget, W ranks therefore do W times fewer sequential updates, each on a W times larger
      batch. Halve ``train_freq`` for two ranks to keep SB3's number of updates instead.

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, ...)
    :param env: The environment to learn from (if registered in Gym, can be str; then each rank builds ``n_envs``
        environments itself)
    :param learning_rate: The learning rate, it can be a function
        of the current progress remaining (from 1 to 0)
    :param buffer_size: size of the replay buffer of each rank
    :param learning_starts: how many global steps to collect transitions for before learning starts
    :param batch_size: Minibatch size of each rank for each gradient update
    :param tau: the soft update coefficient ("Polyak update", between 0 and 1) default 1 for hard update
    :param gamma: the discount factor
    :param train_freq: Update the model every ``train_freq`` steps of each rank's ``env.step()``.
        Alternatively pass a tuple of frequency and unit like ``(5, "step")``; ``"episode"`` is only allowed
        with one process, because ranks would finish episodes at different times and fall out of lockstep.
    :param gradient_steps: How many gradient steps to do after each rollout (see ``train_freq``)
        Set to ``-1`` means to do as many gradient steps as steps done in the environment
        during the rollout.
    :param replay_buffer_class: Replay buffer class to use (for instance ``HerReplayBuffer``).
        If ``None``, it will be automatically selected. With :class:`PrioritizedReplayBuffer` the TD loss is
        weighted by importance weights (normalised by their maximum over all ranks), the priorities are updated
        after each gradient step, and ``n_steps`` and ``gamma`` are passed to the buffer unless
        ``replay_buffer_kwargs`` set them.
    :param replay_buffer_kwargs: Keyword arguments to pass to the replay buffer on creation.
    :param optimize_memory_usage: Enable a memory efficient variant of the replay buffer
        at a cost of more complexity.
        See https://github.com/DLR-RM/stable-baselines3/issues/37#issuecomment-637501195
    :param n_steps: When n_step > 1, uses n-step return (with the NStepReplayBuffer) when updating the Q-value network.
    :param double_q: Double DQN targets: the online network picks the next action, the target network evaluates it
        (off by default, which is SB3's DQN)
    :param target_update_interval: update the target network every ``target_update_interval``
        global environment steps.
    :param exploration_fraction: fraction of entire training period over which the exploration rate is reduced
    :param exploration_initial_eps: initial value of random action probability
    :param exploration_final_eps: final value of random action probability
    :param max_grad_norm: The maximum value for the gradient clipping (applied to the averaged gradient)
    :param stats_window_size: Window size for the rollout logging, specifying the number of episodes of each rank
        to average the reported success rate, mean episode length, and mean reward over
    :param tensorboard_log: the log location for tensorboard (if None, no logging); only rank 0 writes
    :param policy_kwargs: additional arguments to be passed to the policy on creation
    :param verbose: Verbosity level: 0 for no output, 1 for info messages (such as device or wrappers used), 2 for
        debug messages; ranks other than 0 are always silent
    :param seed: Seed for the pseudo random generators; rank ``r`` uses ``seed + r * n_envs`` and its env ``i``
        ``seed + r * n_envs + i``, so no two envs share a seed
    :param device: Device (cpu, cuda, ...) on which the code should be run.
        Setting it to auto, the code will be run on the GPU if possible; under MPI rank ``r`` takes
        ``cuda:{local_rank % n_gpus}``.
    :param n_envs: Number of environments each rank builds when ``env`` is a string (the same on every rank)
    :param vec_env_cls: ``"subproc"``, ``"dummy"`` or a ``VecEnv`` class for those environments; by default a
        ``SubprocVecEnv`` when ``n_envs > 1``, else a ``DummyVecEnv``
    :param vec_env_kwargs: Keyword arguments for the ``VecEnv`` class, e.g. ``{"start_method": "spawn"}``
    :param env_kwargs: Keyword arguments passed to ``gym.make`` when ``env`` is a string
    :param sync_check_interval: Every this many gradient updates, compare a checksum of the weights across ranks
        and raise ``WeightsDivergedError`` if they differ (0 disables the check)
    :param torch_num_threads: torch intra-op threads of each rank. ``None``: 1, unless ``OMP_NUM_THREADS`` is set
        (torch then follows it). One thread is much faster for small networks on shared cores.
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }

    def __init__(
        self,
        policy: str | type[DQNPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 1e-4,
        buffer_size: int = 1_000_000,  # 1e6
        learning_starts: int = 100,
        batch_size: int = 32,
        tau: float = 1.0,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] = 4,
        gradient_steps: int = 1,
        replay_buffer_class: type[ReplayBuffer] | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        optimize_memory_usage: bool = False,
        n_steps: int = 1,
        double_q: bool = False,
        target_update_interval: int = 10000,
        exploration_fraction: float = 0.1,
        exploration_initial_eps: float = 1.0,
        exploration_final_eps: float = 0.05,
        max_grad_norm: float = 10,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        n_envs: int = 1,
        vec_env_cls: str | type[DummyVecEnv | SubprocVecEnv] | None = None,
        vec_env_kwargs: dict[str, Any] | None = None,
        env_kwargs: dict[str, Any] | None = None,
        sync_check_interval: int = 1000,
        torch_num_threads: int | None = None,
        _init_setup_model: bool = True,
    ) -> None:
        check_model_kwargs(
            learning_rate=learning_rate,
            buffer_size=buffer_size,
            learning_starts=learning_starts,
            batch_size=batch_size,
            tau=tau,
            gamma=gamma,
            train_freq=train_freq,
            gradient_steps=gradient_steps,
            target_update_interval=target_update_interval,
            exploration_fraction=exploration_fraction,
            exploration_initial_eps=exploration_initial_eps,
            exploration_final_eps=exploration_final_eps,
            max_grad_norm=max_grad_norm,
            n_steps=n_steps,
            double_q=double_q,
            stats_window_size=stats_window_size,
            sync_check_interval=sync_check_interval,
            n_envs=n_envs,
        )
        # Process-local runtime state, never saved (see _excluded_save_params). Set first: the base class'
        # __init__ and a later load() rely on it.
        self._world_size = mpi_tools.world_size()
        self._rank = mpi_tools.rank()
        self._grad_averager: GradientAverager | None = None
        self._flat_update: FlatUpdate | None = None
        # Q-network forwards for acting and for the TD loss, refreshed before each rollout and each train() call.
        self._acting_q_values: QForward = lambda obs: self.q_net(obs)
        self._online_q_values: QForward = lambda obs: self.q_net(obs)
        self._target_q_values: QForward = lambda obs: self.q_net_target(obs)
        self._global_episode_means: dict[str, float] | None = None
        # Set when a stop was requested by a signal (see sb3_parallel_dqn.interrupt) on any rank: training ends
        # after the gradient steps of the current rollout.
        self.stopped_by_signal: signal.Signals | None = None
        # Saved with the model: envs stepped per _on_step call over the whole job (n_envs * world_size) when it
        # last trained, so that a run resumed with another layout keeps its target-update phase (_setup_learn).
        self._global_envs: int | None = None
        # Saved with the model: the rank whose episodes ep_info_buffer holds, so that a model loaded on every rank
        # counts rank 0's restored episodes once (_setup_learn).
        self._episode_stats_rank = self._rank
        set_torch_threads(torch_num_threads)

        if isinstance(env, str) and (n_envs > 1 or vec_env_cls is not None or env_kwargs is not None):
            env = make_parallel_vec_env(
                env, n_envs=n_envs, env_kwargs=env_kwargs, vec_env_cls=vec_env_cls, vec_env_kwargs=vec_env_kwargs
            )
        elif isinstance(env, VecEnv) and n_envs not in (1, env.num_envs):
            raise ValueError(f"n_envs={n_envs} but the given VecEnv has {env.num_envs} envs; n_envs only applies to env ids")

        super().__init__(
            policy,
            env,
            learning_rate,
            buffer_size,
            learning_starts,
            batch_size,
            tau,
            gamma,
            train_freq,
            gradient_steps,
            replay_buffer_class=replay_buffer_class,
            replay_buffer_kwargs=replay_buffer_kwargs,
            optimize_memory_usage=optimize_memory_usage,
            n_steps=n_steps,
            target_update_interval=target_update_interval,
            exploration_fraction=exploration_fraction,
            exploration_initial_eps=exploration_initial_eps,
            exploration_final_eps=exploration_final_eps,
            max_grad_norm=max_grad_norm,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            # Only rank 0 talks: W copies of every message help nobody.
            verbose=verbose if self._rank == 0 else 0,
            seed=seed,
            # The constructor runs on every rank, except inside load(), which one rank may call alone.
            device=pick_device(device, collective=_init_setup_model),
            _init_setup_model=False,
        )
        self.sync_check_interval = sync_check_interval
        self.torch_num_threads = torch_num_threads
        self.double_q = double_q

        if _init_setup_model:
            self._setup_model()
            if self._world_size > 1:
                self._check_lockstep()  # before the broadcast, whose size is the model's
            # Every rank starts from rank 0's weights (q_net and q_net_target), whatever its torch seed.
            broadcast_module_(self.policy)

    @staticmethod
    def _wrap_env(env: GymEnv, verbose: int = 0, monitor_wrapper: bool = True) -> VecEnv:
        env = DQN._wrap_env(env, verbose, monitor_wrapper)
        # SB3 asserts this later; a specific exception (and message) lets scripts tell bad input from a bug.
        if not isinstance(env.action_space, spaces.Discrete):
            raise UnsupportedSpaceError(
                f"DQN chooses among discrete actions, but this env's action space is {env.action_space}: use an env "
                "with a Discrete action space (or an algorithm for continuous actions, such as SAC or TD3)"
            )
        return env

    def _setup_model(self) -> None:
        if "dueling" in self.policy_kwargs:
            # SB3's policies take no `dueling` argument: use ours for dueling=True, and keep SB3's (whose model files
            # load without this package) for dueling=False. A new dict: the user's own must not change.
            dueling = self.policy_kwargs["dueling"]
            if dueling:
                self.policy_class = dueling_policy_class(self.policy_class)  # type: ignore[arg-type]
            elif not issubclass(self.policy_class, DQNPolicyWithDueling):
                self.policy_kwargs = {key: value for key, value in self.policy_kwargs.items() if key != "dueling"}
        prioritized = self.replay_buffer_class is not None and issubclass(self.replay_buffer_class, PrioritizedReplayBuffer)
        if prioritized:
            # Our buffer computes n-step returns itself: hand it the model's settings (SB3 only does so for the
            # buffer it picks itself), in a new dict, as the user's own must not change.
            self.replay_buffer_kwargs = {"n_steps": self.n_steps, "gamma": self.gamma, **self.replay_buffer_kwargs}
        with warnings.catch_warnings():
            if prioritized or (
                self.replay_buffer_class is NStepReplayBuffer and self.replay_buffer_kwargs.get("n_steps") == self.n_steps
            ):
                # SB3 warns that n_steps is ignored with a custom buffer class, which is wrong when replay_buffer_kwargs
                # carry it: here, and when load() runs this again with the class SB3 itself chose for n_steps > 1.
                warnings.filterwarnings("ignore", message=r"`n_steps=\d+` is ignored because a custom `replay_buffer_class`")
            super()._setup_model()
        self._flat_update = None
        self._grad_averager = None

    def set_random_seed(self, seed: int | None = None) -> None:
        if seed is None:
            return
        # Offset by rank so that ranks explore and sample their buffers differently; env i of rank r gets
        # seed + r * n_envs + i (VecEnv.seed adds i). Rank 0 is seeded exactly as SB3's DQN.
        super().set_random_seed(seed + self._rank * self.n_envs)

    def _on_step(self) -> None:
        """
        Update the exploration rate and target network if needed.
        This method is called in ``collect_rollouts()`` after each step in the environment.
        """
        self._n_calls += 1
        # Account for multiple environments and ranks:
        # each call to step() corresponds to n_envs transitions on each of the world_size ranks
        if self._n_calls % max(self.target_update_interval // (self.n_envs * self._world_size), 1) == 0:
            polyak_update(self.q_net.parameters(), self.q_net_target.parameters(), self.tau)
            # Copy running stats, see GH issue #996
            polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)

        self.exploration_rate = self.exploration_schedule(self._current_progress_remaining)
        self.logger.record("rollout/exploration_rate", self.exploration_rate)

    def _sample_action(
        self,
        learning_starts: int,
        action_noise: ActionNoise | None = None,
        n_envs: int = 1,
    ) -> tuple[np.ndarray, np.ndarray]:
        lean = self._sample_greedy_or_random(n_envs)
        # For a Discrete action space the action and the one stored in the buffer are the same array, as in SB3.
        actions = super()._sample_action(learning_starts, action_noise, n_envs) if lean is None else (lean, lean)
        # collect_rollouts() adds this rank's n_envs to num_timesteps right after env.step(), which follows this
        # call; the other ranks step as many envs at the same time. Count theirs here, once per step, so that
        # num_timesteps is global when callbacks, schedules and the target update read it.
        self.num_timesteps += (self._world_size - 1) * n_envs
        return actions

    def _sample_greedy_or_random(self, n_envs: int) -> np.ndarray | None:
        """
        SB3's epsilon-greedy action choice after ``learning_starts`` (``DQN.predict(deterministic=False)``), without
        the generic ``policy.predict`` around the Q-network forward: that wrapper (mode switch over every module,
        observation checks and reshapes) cost about 0.2 ms per env step, several times the CartPole step itself.
        Same random draws in the same order, same forward, so the same actions as SB3. Returns None where SB3's
        path is needed: before ``learning_starts`` and for observations other than one array of the space's shape
        (dicts, un-transposed images).
        """
        observation = self._last_obs
        if (
            self.num_timesteps < self.learning_starts
            or not isinstance(observation, np.ndarray)
            or observation.shape[1:] != self.observation_space.shape
        ):
            return None
        if np.random.rand() < self.exploration_rate:
            return np.array([self.action_space.sample() for _ in range(n_envs)])
        with th.no_grad():
            # QNetwork._predict(observation, deterministic=True), with the lean forward of q_forward.py
            q_values = self._acting_q_values(th.as_tensor(observation, device=self.device))
        return q_values.argmax(dim=1).cpu().numpy().reshape(-1)

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        train_freq: TrainFreq,
        replay_buffer: ReplayBuffer,
        action_noise: ActionNoise | None = None,
        learning_starts: int = 0,
        log_interval: int | None = None,
    ) -> RolloutReturn:
        if self.stopped_by_signal is not None:
            # Every rank agreed at the end of the previous rollout, whose gradient steps are now done: stop here,
            # on a rollout boundary, where a checkpoint resumes exactly.
            return RolloutReturn(0, 0, continue_training=False)
        # Evaluation mode for action selection (dropout, batch norm), once per rollout rather than once per step as
        # SB3's predict() does: nothing switches it back before train(), which sets training mode itself.
        self.policy.set_training_mode(False)
        self._acting_q_values = q_forward(self.q_net)
        rollout = super().collect_rollouts(
            env, callback, train_freq, replay_buffer, action_noise, learning_starts, log_interval
        )
        local_signal = interrupt.requested()
        if self._world_size == 1:
            self.stopped_by_signal = local_signal
            if local_signal is not None:
                interrupt.acknowledge()  # a later learn() runs in full
            return rollout
        # One small Allreduce per rollout keeps the ranks in lockstep: if a callback stopped training on any rank,
        # all stop here (before train(), whose collectives would otherwise deadlock); a signal received by any rank
        # stops all after this rollout's train(). It also carries each rank's step count, which only differs when a
        # rank stopped early, and the episode statistics that rank 0 logs for the whole job.
        assert self.ep_info_buffer is not None and self.ep_success_buffer is not None
        stats = np.array(
            [
                float(not rollout.continue_training),
                rollout.episode_timesteps,
                sum(info["r"] for info in self.ep_info_buffer),
                sum(info["l"] for info in self.ep_info_buffer),
                len(self.ep_info_buffer),
                sum(self.ep_success_buffer),
                len(self.ep_success_buffer),
                rollout.n_episodes,
                float(local_signal == signal.SIGTERM),
                float(local_signal == signal.SIGINT),
            ],
            dtype=np.float64,
        )
        (n_stopped, n_steps, sum_r, sum_l, n_episodes, sum_success, n_success, n_new_episodes, n_sigterm, n_sigint) = (
            mpi_tools.allreduce_sum_(stats)
        )
        # num_timesteps assumed every rank made as many steps as this one; count what they really made instead.
        self.num_timesteps += int(n_steps) - self._world_size * rollout.episode_timesteps
        # time/episodes counts the episodes of every rank (SB3 counted this rank's).
        self._episode_num += int(n_new_episodes) - rollout.n_episodes
        self._global_episode_means = {}
        if n_episodes > 0:
            self._global_episode_means.update(r=sum_r / n_episodes, l=sum_l / n_episodes)
        if n_success > 0:
            self._global_episode_means["success"] = sum_success / n_success
        if n_sigterm > 0 or n_sigint > 0:
            self.stopped_by_signal = signal.SIGTERM if n_sigterm > 0 else signal.SIGINT
            interrupt.acknowledge()  # on every rank: a later learn() runs in full
        if n_stopped > 0:
            return rollout._replace(continue_training=False)
        return rollout

    def dump_logs(self) -> None:
        if self._global_episode_means is None:  # one process, or no rollout finished yet
            super().dump_logs()
            return
        # SB3 logs the means of these buffers: hand it the means over every rank's buffer (exchanged at the end of
        # the last rollout) instead of this rank's own.
        local_buffers = self.ep_info_buffer, self.ep_success_buffer
        means = self._global_episode_means
        self.ep_info_buffer = deque([{"r": means["r"], "l": means["l"]}] if "r" in means else [])
        self.ep_success_buffer = deque([means["success"]] if "success" in means else [])
        try:
            super().dump_logs()
        finally:
            self.ep_info_buffer, self.ep_success_buffer = local_buffers

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        # Update learning rate according to schedule
        self._update_learning_rate(self.policy.optimizer)

        # SB3's DQN.train(), step for step and bit for bit, on flat buffers (see flat_update.py) and with the batches
        # of all steps drawn up front (see replay_sampling.py), plus the gradient average over ranks. A prioritized
        # buffer is sampled step by step instead, as each step's new priorities weigh the next draw.
        update = self._prepare_gradient_steps()
        replay_buffer = self.replay_buffer
        prioritized = isinstance(replay_buffer, PrioritizedReplayBuffer)
        if prioritized:
            replay_buffer.set_progress(self._current_progress_remaining)  # type: ignore[union-attr]
        else:
            batches = sample_batches(replay_buffer, gradient_steps, batch_size, self._vec_normalize_env)  # type: ignore[arg-type]
        losses = []
        try:
            for step in range(gradient_steps):
                if prioritized:
                    replay_data, weights, sampled = self._sample_prioritized(replay_buffer, batch_size)  # type: ignore[arg-type]
                    loss, td_errors = self._weighted_td_loss(replay_data, weights)
                else:
                    loss = self._td_loss(next(batches))
                losses.append(self._backward(update, loss))
                # Clip gradient norm
                grad_norm = update.clip_grad_norm_(self.max_grad_norm)
                # A NaN or inf would spread to every weight at the optimizer step (and, under MPI, to every rank
                # through the average): stop before it does. The averaged gradients are the same on every rank, so
                # all ranks raise together. One scalar check per update (a device sync on GPU).
                if not (math.isfinite(losses[-1]) and th.isfinite(grad_norm)):
                    raise NonFiniteError(
                        f"non-finite loss or gradients at gradient update {self._n_updates + step + 1} "
                        f"(global step {self.num_timesteps}): loss {losses[-1]}, gradient norm {float(grad_norm)}; "
                        "the weights were not updated"
                    )
                update.step()
                if prioritized:
                    replay_buffer.update_priorities(sampled, td_errors.cpu().numpy())  # type: ignore[union-attr]

                if self._world_size > 1 and self.sync_check_interval > 0:
                    n_updates = self._n_updates + step + 1
                    if n_updates % self.sync_check_interval == 0:
                        check_synced(self.policy, n_updates)
        finally:
            update.detach_steps()

        # Increase update counter
        self._n_updates += gradient_steps

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", np.mean(losses))
        if self._grad_averager is not None:
            self.logger.record("time/mpi_sync_ms", self._grad_averager.pop_mean_sync_ms())

    def _td_loss(self, replay_data: ReplayBufferSamples) -> th.Tensor:
        """SB3's DQN loss: Huber loss between Q(s, a) and the 1-step (or n-step) TD target of the target network."""
        current_q_values, target_q_values = self._q_values_and_targets(replay_data)
        # Compute Huber loss (less sensitive to outliers)
        return F.smooth_l1_loss(current_q_values, target_q_values)

    def _sample_prioritized(
        self, replay_buffer: PrioritizedReplayBuffer, batch_size: int
    ) -> tuple[ReplayBufferSamples, th.Tensor, np.ndarray]:
        """A prioritized batch, its normalised importance weights (a column) and its leaves in the sum-tree."""
        replay_data, weights, sampled = replay_buffer.sample_prioritized(batch_size, env=self._vec_normalize_env)
        # Divide by the largest weight of this step over all ranks: every rank's samples then count on one scale in
        # the averaged gradient, and weights only ever scale updates down (Schaul et al. 2016, section 3.4).
        max_weight = mpi_tools.allreduce_max_(np.array([weights.max()]))[0]
        weights_tensor = th.as_tensor(weights / max_weight, dtype=th.float32, device=self.device).reshape(-1, 1)
        return replay_data, weights_tensor, sampled

    def _weighted_td_loss(self, replay_data: ReplayBufferSamples, weights: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """The TD loss with each sample's Huber loss weighted, and the TD errors (for the new priorities)."""
        current_q_values, target_q_values = self._q_values_and_targets(replay_data)
        loss = (weights * F.smooth_l1_loss(current_q_values, target_q_values, reduction="none")).mean()
        return loss, (current_q_values - target_q_values).detach().reshape(-1)

    def _q_values_and_targets(self, replay_data: ReplayBufferSamples) -> tuple[th.Tensor, th.Tensor]:
        """Q(s, a) of the online network (with gradients) and the TD targets (without)."""
        # For n-step replay, discount factor is gamma**n_steps (when no early termination)
        discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma

        with th.no_grad():
            # Compute the next Q-values using the target network
            next_q_values = self._target_q_values(replay_data.next_observations)
            if self.double_q:
                # Double DQN: the online network picks the next action, the target network evaluates it, which
                # removes the max operator's overestimation (van Hasselt et al. 2016)
                next_actions = self._online_q_values(replay_data.next_observations).argmax(dim=1, keepdim=True)
                next_q_values = th.gather(next_q_values, dim=1, index=next_actions)
            else:
                # Follow greedy policy: use the one with the highest value
                next_q_values, _ = next_q_values.max(dim=1)
                # Avoid potential broadcast issue
                next_q_values = next_q_values.reshape(-1, 1)
            # 1-step TD target
            target_q_values = replay_data.rewards + (1 - replay_data.dones) * discounts * next_q_values

        # Get current Q-values estimates
        current_q_values = self._online_q_values(replay_data.observations)

        # Retrieve the q-values for the actions from the replay buffer
        current_q_values = th.gather(current_q_values, dim=1, index=replay_data.actions.long())
        return current_q_values, target_q_values

    def _backward(self, update: FlatUpdate, loss: th.Tensor) -> float:
        """Gradients of ``loss``, averaged over ranks (before clipping, so that every rank clips and steps alike)."""
        update.zero_grad()
        if self._grad_averager is None:
            loss_value = loss.item()
            loss.backward()
            return loss_value
        loss.backward()
        # The loss travels in the same Allreduce, for logging the mean over ranks. The gradient views were checked
        # once for this train() call (FlatUpdate.attach), and nothing in it replaces them: no check per step.
        return self._grad_averager.average_(loss, reattach=False)

    def _prepare_gradient_steps(self) -> FlatUpdate:
        """
        Before a series of gradient steps: the flat-buffer update of the online network (rebuilt when ``load`` or
        ``set_parameters`` replaced the network or optimizer) and the lean Q-network forwards (see q_forward.py).
        """
        self._online_q_values = q_forward(self.q_net)
        self._target_q_values = q_forward(self.q_net_target)
        parameters = [p for p in self.q_net.parameters() if p.requires_grad]
        update = self._flat_update
        if (
            update is None
            or update.optimizer is not self.policy.optimizer
            or update.grad_buffer.device != parameters[0].device  # the policy was moved to another device
            or len(update.parameters) != len(parameters)
            or any(a is not b for a, b in zip(update.parameters, parameters, strict=True))
        ):
            grad_buffer = None
            if self._world_size > 1:
                self._grad_averager = GradientAverager(parameters)
                grad_buffer = self._grad_averager.buffer
            update = self._flat_update = FlatUpdate(parameters, self.policy.optimizer, grad_buffer)
        else:
            update.attach()
        return update

    def learn(
        self: SelfParallelDQN,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "ParallelDQN",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfParallelDQN:
        """
        Train on ``total_timesteps`` global env steps (summed over ranks). Under MPI every rank must call it with
        the same arguments; only rank 0 logs and shows the progress bar.
        """
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ) -> tuple[int, BaseCallback]:
        self.stopped_by_signal = None
        if self._world_size > 1:
            self._check_lockstep(
                total_timesteps=total_timesteps,
                reset_num_timesteps=reset_num_timesteps,
                num_timesteps=0 if reset_num_timesteps else self.num_timesteps,
            )
            # Train from rank 0's weights and optimizer state. Doing it here rather than inside load() and
            # set_parameters() covers both (whatever each rank loaded) and keeps them free of collectives, so that
            # rank 0 alone may load a model to evaluate it without deadlocking.
            broadcast_module_(self.policy)
            broadcast_optimizer_(self.policy.optimizer)
            if self._rank != 0:
                # Only rank 0 writes stdout, csv and tensorboard: the others log into the void.
                self.set_logger(Logger(folder=None, output_formats=[]))
        global_envs = self.n_envs * self._world_size
        if not reset_num_timesteps and self._global_envs not in (None, global_envs):
            # _on_step updates the target network every target_update_interval // global_envs calls: rescale the
            # call counter so that the next update falls on the same global step as with the old layout.
            self._n_calls = self._n_calls * self._global_envs // global_envs
        self._global_envs = global_envs
        if self._episode_stats_rank != self._rank:
            # Loaded from rank 0's file: these are rank 0's episodes, which rank 0 itself counts in the global means.
            self.ep_info_buffer = self.ep_success_buffer = None  # SB3 starts new ones below
        self._episode_stats_rank = self._rank
        if reset_num_timesteps or self._last_obs is None:
            # SB3 resets the envs below: the newest stored transition of each env is the end of a cut episode.
            truncate_last_transitions(self.replay_buffer)
        return super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)

    def _check_lockstep(self, **learn_settings: Any) -> None:
        """
        Refuse, on every rank at once and before any training collective, settings that differ across ranks: those
        that change how many collectives a rank calls or their sizes (a deadlock, or a crash inside MPI), and those
        that would make the ranks train different models. One ``allgather`` of a small dict.
        """
        assert isinstance(self.train_freq, TrainFreq)
        if self.train_freq.unit != TrainFrequencyUnit.STEP:
            raise LockstepError(
                f"train_freq=({self.train_freq.frequency}, {self.train_freq.unit.value!r}) counts episodes, which ranks "
                "finish at different times: with several MPI ranks, give train_freq in steps."
            )
        buffer_class = type(self.replay_buffer) if self.replay_buffer is not None else self.replay_buffer_class
        settings = {
            "n_envs": self.n_envs,
            "train_freq": self.train_freq.frequency,
            "gradient_steps": self.gradient_steps,
            "batch_size": self.batch_size,
            "learning_starts": self.learning_starts,
            "sync_check_interval": self.sync_check_interval,
            "n_steps": self.n_steps,
            "double_q": self.double_q,
            "replay_buffer_class": None if buffer_class is None else buffer_class.__qualname__,
            "parameters": [tuple(tensor.shape) for tensor in self.policy.state_dict().values()],
            **learn_settings,
        }
        by_rank = mpi_tools.allgather_object(settings)
        differing = [f"{name}: {[values[name] for values in by_rank]}" for name in settings if any(
            values[name] != settings[name] for values in by_rank
        )]  # fmt: skip
        if differing:
            details = "; ".join(differing)
            raise LockstepError(
                f"These settings differ across MPI ranks (values by rank): {details}. Every rank must use the same "
                "ones, or the ranks would call collective operations a different number of times and deadlock."
            )

    def _init_callback(self, callback: MaybeCallback, progress_bar: bool = False) -> BaseCallback:
        if not (progress_bar and self._world_size > 1):
            return super()._init_callback(callback, progress_bar)
        # As SB3, but one progress bar for the job (on rank 0) that counts every rank's steps.
        if isinstance(callback, list):
            callback = CallbackList(callback)
        if not isinstance(callback, BaseCallback):
            callback = ConvertCallback(callback)
        if self._rank == 0:
            callback = CallbackList([callback, GlobalProgressBarCallback()])
        callback.init_callback(self)
        return callback

    def save(
        self,
        path: str | pathlib.Path | io.BufferedIOBase,
        exclude: Any = None,
        include: Any = None,
    ) -> None:
        """
        As SB3's, but only rank 0 writes (all ranks hold the same weights, and concurrent writers would clash), and a
        path is written atomically: a crash mid-write leaves the previous file intact.
        """
        if self._rank != 0:
            return
        if not isinstance(path, str | os.PathLike):
            super().save(path, exclude, include)
            return
        with atomic_path(path, "zip") as temporary:
            super().save(temporary, exclude, include)

    def save_replay_buffer(self, path: str | pathlib.Path | io.BufferedIOBase) -> None:
        """
        Save this rank's replay buffer, atomically; under MPI each rank writes ``<path>.rank<r>.pkl``
        (``path`` without its ``.pkl``).
        """
        if not isinstance(path, str | os.PathLike):
            super().save_replay_buffer(path)
            return
        with atomic_path(self._rank_path(path), "pkl") as temporary:
            super().save_replay_buffer(temporary)

    def load_replay_buffer(self, path: str | pathlib.Path | io.BufferedIOBase, truncate_last_traj: bool = True) -> None:
        """Load this rank's replay buffer, saved by :meth:`save_replay_buffer` with the same world size."""
        if isinstance(path, str | os.PathLike):
            path = self._rank_path(path)
        super().load_replay_buffer(path, truncate_last_traj)

    def _rank_path(self, path: str | os.PathLike[str]) -> pathlib.Path:
        path = pathlib.Path(path)
        if path.suffix == "":  # as SB3, which saves "buffer" as "buffer.pkl"
            path = pathlib.Path(f"{path}.pkl")
        return rank_path(path, self._rank, self._world_size)

    def _excluded_save_params(self) -> list[str]:
        runtime = ["_world_size", "_rank", "_grad_averager", "_flat_update", "_global_episode_means", "stopped_by_signal"]
        runtime += ["_acting_q_values", "_online_q_values", "_target_q_values"]
        return [*super()._excluded_save_params(), *runtime]


def set_torch_threads(torch_num_threads: int | None) -> None:
    """
    Set torch's intra-op threads for this process.

    ``None`` means 1 unless ``OMP_NUM_THREADS`` is set (torch already follows it). Measured on a 2-core machine:
    SB3 DQN on CartPole took 129 s with torch's default 2 threads and 19 s with 1, because small matrix products
    gain nothing from threads while ranks and env workers fight over the cores.
    """
    if torch_num_threads is None:
        if "OMP_NUM_THREADS" in os.environ:
            return
        torch_num_threads = 1
    if torch_num_threads < 1:
        raise ValueError(f"torch_num_threads must be >= 1 or None, not {torch_num_threads}")
    if th.get_num_threads() != torch_num_threads:
        th.set_num_threads(torch_num_threads)


def pick_device(device: th.device | str, collective: bool = False) -> th.device | str:
    """
    ``"auto"`` under MPI spreads ranks over the host's GPUs: ``cuda:{local_rank % n_gpus}``.

    The local rank comes from the launcher's environment (:func:`mpi_tools.local_rank`), which needs no collective, so
    that one rank alone may pick a device (``ParallelDQN.load`` on rank 0). Where the launcher does not publish it,
    ``collective=True`` (only where every rank runs: the constructor) computes it once for the process; otherwise the
    global rank stands in for it.
    """
    if device != "auto" or mpi_tools.world_size() == 1:
        return device
    local_rank = mpi_tools.compute_local_rank() if collective else mpi_tools.local_rank()
    if th.cuda.is_available():
        index = mpi_tools.rank() if local_rank is None else local_rank
        return th.device(f"cuda:{index % th.cuda.device_count()}")
    return device
