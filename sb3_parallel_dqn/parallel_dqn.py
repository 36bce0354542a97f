import io
import pathlib
import signal
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from stable_baselines3 import DQN
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, RolloutReturn, Schedule, TrainFreq
from stable_baselines3.common.utils import polyak_update
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv
from stable_baselines3.dqn.policies import CnnPolicy, DQNPolicy, MlpPolicy, MultiInputPolicy

from sb3_parallel_dqn.buffers.prioritized import fitted_replay_buffer, replay_buffer_as_requested, truncate_last_transitions
from sb3_parallel_dqn.callbacks import with_global_progress_bar
from sb3_parallel_dqn.distributed import comm, lockstep, mesh
from sb3_parallel_dqn.distributed.devices import pick_device, set_torch_threads
from sb3_parallel_dqn.distributed.gradients import broadcast_module_, broadcast_optimizer_
from sb3_parallel_dqn.engine import Collector, GlobalClock, Learner, asynchronous, model_parallel
from sb3_parallel_dqn.engine.settings_check import check_model
from sb3_parallel_dqn.envs import build_env
from sb3_parallel_dqn.io import checkpoints
from sb3_parallel_dqn.policies import resolve_dueling
from sb3_parallel_dqn.validation import check_action_space, check_model_kwargs

SelfParallelDQN = TypeVar("SelfParallelDQN", bound="ParallelDQN")


class ParallelDQN(DQN):
    """
    Parallel Deep Q-Network: SB3's DQN with parallel rollouts and MPI data-parallel gradient updates.

    Paper: https://arxiv.org/abs/1312.5602, https://www.nature.com/articles/nature14236; Double DQN (``double_q``):
    https://arxiv.org/abs/1509.06461; dueling head (``policy_kwargs=dict(dueling=True)``):
    https://arxiv.org/abs/1511.06581; synchronous data parallelism: https://arxiv.org/abs/1604.00981; tensor
    parallelism: https://arxiv.org/abs/1909.08053; ZeRO: https://arxiv.org/abs/1910.02054. Defaults are SB3's.

    Under ``mpirun -np W`` every rank steps its own ``n_envs`` envs into its own replay buffer, computes gradients on
    its own samples and averages them with one ``Allreduce`` per gradient step (before clipping): all ranks hold
    bit-identical weights. Without ``mpirun`` it is SB3's ``DQN``, bit for bit. Construct the model and call ``learn``
    on every rank: both give every rank rank 0's weights (``learn`` also its optimizer state), while ``load`` and
    ``set_parameters`` stay local (rank 0 alone may load a model). Only rank 0 prints, logs and writes model files.
    ``total_timesteps``, ``num_timesteps``, ``learning_starts`` and ``target_update_interval`` count global env steps
    (all ranks); ``batch_size`` and ``buffer_size`` are per rank; ``train_freq`` and ``gradient_steps`` are as in SB3,
    per rank: the same global budget makes W times fewer sequential updates on W times larger batches.

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, ...)
    :param env: The environment to learn from (if registered in Gym, can be str; then each rank builds ``n_envs``)
    :param learning_rate: The learning rate, it can be a function of the current progress remaining (from 1 to 0)
    :param buffer_size: size of the replay buffer of each rank
    :param learning_starts: how many global steps to collect transitions for before learning starts
    :param batch_size: Minibatch size of each rank for each gradient update
    :param tau: the soft update coefficient ("Polyak update", between 0 and 1) default 1 for hard update
    :param gamma: the discount factor
    :param train_freq: Update the model every ``train_freq`` steps of each rank's ``env.step()``, or a tuple like
        ``(5, "step")``; ``"episode"`` only with one process (ranks finish episodes at different times)
    :param gradient_steps: How many gradient steps to do after each rollout (-1: as many as env steps in it)
    :param replay_buffer_class: Replay buffer class to use; :class:`~sb3_parallel_dqn.PrioritizedReplayBuffer` for
        prioritized replay (https://arxiv.org/abs/1511.05952), its weights normalised over all ranks
    :param replay_buffer_kwargs: Keyword arguments to pass to the replay buffer on creation.
    :param optimize_memory_usage: Enable a memory efficient variant of the replay buffer
        at a cost of more complexity. See https://github.com/DLR-RM/stable-baselines3/issues/37#issuecomment-637501195
    :param n_steps: When n_step > 1, uses n-step return (with the NStepReplayBuffer) when updating the Q-value network.
    :param double_q: Double DQN targets (the online network picks the next action, the target network scores it)
    :param target_update_interval: update the target network every ``target_update_interval`` global env steps
    :param exploration_fraction: fraction of entire training period over which the exploration rate is reduced
    :param exploration_initial_eps: initial value of random action probability
    :param exploration_final_eps: final value of random action probability
    :param max_grad_norm: The maximum value for the gradient clipping (applied to the averaged gradient)
    :param stats_window_size: Window size for the rollout logging, in episodes of each rank
    :param tensorboard_log: the log location for tensorboard (if None, no logging); only rank 0 writes
    :param policy_kwargs: additional arguments to be passed to the policy on creation (``dueling=True``: dueling head)
    :param verbose: Verbosity level: 0 for no output, 1 for info messages, 2 for debug messages; other ranks: 0
    :param seed: Seed for the pseudo random generators; env ``i`` of rank ``r`` gets ``seed + r * n_envs + i``
    :param device: Device (cpu, cuda, ...) on which the code should be run; ``"auto"`` under MPI: rank ``r`` takes
        ``cuda:{local_rank % n_gpus}`` where there are GPUs
    :param n_envs: Number of environments each rank builds when ``env`` is a string (the same on every rank)
    :param vec_env_cls: ``"subproc"``, ``"dummy"`` or a ``VecEnv`` class for those environments (default:
        ``SubprocVecEnv`` when ``n_envs > 1``, else ``DummyVecEnv``)
    :param vec_env_kwargs: Keyword arguments for the ``VecEnv`` class, e.g. ``{"start_method": "spawn"}``
    :param env_kwargs: Keyword arguments passed to ``gym.make`` when ``env`` is a string
    :param sync_check_interval: Every this many gradient updates, compare a checksum of the weights across ranks
        and raise ``WeightsDivergedError`` if they differ (0 disables the check)
    :param torch_num_threads: torch threads of each rank; ``None``: 1 unless ``OMP_NUM_THREADS`` is set (load keeps)
    :param model_parallel_size: ranks that hold one Q-network, split Megatron-style (tensor parallelism, see
        :mod:`~sb3_parallel_dqn.distributed.tensor_parallel`); the job's W ranks form W / M replicas
    :param shard_optimizer: shard Adam's state over the replicas (ZeRO stage 1, see
        :mod:`~sb3_parallel_dqn.updates.sharded`)
    :param learner_ranks: None (default): the synchronous mode, every rank collects and learns. ``L``: the
        asynchronous mode (Ape-X, https://arxiv.org/abs/1803.00933; see :mod:`~sb3_parallel_dqn.engine.asynchronous`)
        under ``mpirun -np W``: ranks ``0 .. L-1`` learn, the other ``W - L`` act and post their transitions to a
        learner without waiting for it (``L = 1`` for now); ``total_timesteps`` counts the actors' env steps
    :param samples_per_insert: the asynchronous mode's replay ratio, transitions sampled per transition inserted,
        held by a rate limiter (Reverb's ``SampleToInsertRatio``); None: ``batch_size * gradient_steps / (train_freq
        * n_envs)``, the synchronous mode's
    :param weight_sync_interval: in the asynchronous mode, the learner posts its weights to the actors every this
        many updates (without waiting for them)
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
        model_parallel_size: int = 1,
        shard_optimizer: bool = False,
        learner_ranks: int | None = None,
        samples_per_insert: float | None = None,
        weight_sync_interval: int = 10,
        _init_setup_model: bool = True,
    ) -> None:
        check_model_kwargs(**locals())  # the arguments that have a rule (validation.ARGUMENT_RULES), as config files
        # Process-local runtime state, never saved (see _excluded_save_params); the base class' __init__ needs it.
        self._world_size, self._rank = comm.world_size(), comm.rank()
        # The signal (see sb3_parallel_dqn.interrupt) that stopped training on some rank, after that rollout's updates.
        self.stopped_by_signal: signal.Signals | None = None
        # Saved: global envs per _on_step call when the model last trained, so that a run resumed with another
        # layout keeps its target-update phase (_setup_learn); and the rank whose episodes ep_info_buffer holds.
        self._global_envs: int | None = None
        self._episode_stats_rank = self._rank
        self.model_parallel_size, self.shard_optimizer = model_parallel_size, shard_optimizer
        self.learner_ranks, self.samples_per_insert = learner_ranks, samples_per_insert
        self.weight_sync_interval = weight_sync_interval
        if learner_ranks is not None and _init_setup_model:
            # Before any collective: a layout that cannot work is refused on every rank alike.
            asynchronous.check_layout(learner_ranks, self._world_size)
        if _init_setup_model:  # every rank runs this: set up the mesh before the envs, whose seeds count replicas
            seed = mesh.get(model_parallel_size).seed_of_the_job(seed)
        if isinstance(env, str):
            env = build_env(env, n_envs, env_kwargs, vec_env_cls, vec_env_kwargs, model_parallel_size)
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
            verbose=verbose if self._rank == 0 else 0,  # W copies of every message help nobody
            seed=seed,
            # Every rank runs the constructor, except inside load(), which one rank may call alone.
            device=pick_device(device, collective=_init_setup_model),
            _init_setup_model=False,
        )
        self.sync_check_interval = sync_check_interval
        self.torch_num_threads = torch_num_threads
        self.double_q = double_q

        if _init_setup_model:
            set_torch_threads(self.torch_num_threads)  # the constructor's default (None: 1); load() keeps the process'
            self._setup_model()
            if self._world_size > 1:
                check_model(self)  # before the broadcast, whose size is the model's
            # rank 0's weights (its shard's; every rank's in the asynchronous mode), whatever the seed
            broadcast_module_(self.policy, group=self._mesh.weights_group)

    @staticmethod
    def _wrap_env(env: GymEnv, verbose: int = 0, monitor_wrapper: bool = True) -> VecEnv:
        # As SB3, with a specific error for a non-Discrete action space (SB3 asserts later), for scripts to report.
        env = DQN._wrap_env(env, verbose, monitor_wrapper)
        check_action_space(env.action_space)
        return env

    def _setup_model(self) -> None:
        # As SB3, plus the dueling policy class and prioritized replay's n-step settings (load() runs this again).
        self.policy_class, self.policy_kwargs = resolve_dueling(self.policy_class, self.policy_kwargs)  # type: ignore[arg-type]
        if self.torch_num_threads is not None:  # load() sets its argument (or the file's) first; None: see __init__
            set_torch_threads(self.torch_num_threads)
        # The model's own (collective the first time M > 1 or an asynchronous layout is used). In one process a model
        # trained asynchronously is SB3's DQN, as any other (a zip loaded to evaluate).
        asynchronous_mode = getattr(self, "learner_ranks", None) is not None and self._world_size > 1
        self._mesh = mesh.get_roles(self.learner_ranks) if asynchronous_mode else mesh.get(self.model_parallel_size)  # type: ignore[arg-type]
        with replay_buffer_as_requested(self):  # what was asked, not what a set-up resolved: load(n_steps=...) applies
            super()._setup_model()
        if asynchronous_mode:
            self._layout = asynchronous.check_settings(self)
            if self._mesh.role == "actor":  # transitions go to the learner's buffer: an actor holds one chunk at most
                self.replay_buffer = asynchronous.Outbox(self.n_envs, type(self.replay_buffer))  # type: ignore[assignment]
        model_parallel.shard_policy(self.policy, self._mesh)  # cut from the network SB3 built: one start for any mesh
        # The two roles and the step arithmetic they share (process-local, never saved).
        self._clock = GlobalClock(self, self._mesh)
        self._collector = Collector(self, self._mesh, self._clock)
        self._learner = Learner(self, self._mesh)

    def set_random_seed(self, seed: int | None = None) -> None:
        # As SB3, offset by rank: ranks explore and sample differently, env i of rank r gets seed + r * n_envs + i.
        if seed is not None:
            super().set_random_seed(lockstep.env_seed(seed, self.n_envs, 0, self._mesh.seed_index))

    def _on_step(self) -> None:
        # As SB3, with the target update every target_update_interval global steps: each call is n_envs * W of them.
        self._n_calls += 1
        if self._clock.target_update_due(self._n_calls, self.target_update_interval):
            polyak_update(self.q_net.parameters(), self.q_net_target.parameters(), self.tau)
            # Copy running stats, see GH issue #996
            polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)

        self.exploration_rate = self.exploration_schedule(self._current_progress_remaining)
        self.logger.record("rollout/exploration_rate", self.exploration_rate)

    def _sample_action(
        self, learning_starts: int, action_noise: ActionNoise | None = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        # As SB3 (the lean path draws the same actions), and num_timesteps counts the other ranks' steps too.
        lean = self._collector.greedy_or_random(n_envs)
        actions = super()._sample_action(learning_starts, action_noise, n_envs) if lean is None else (lean, lean)
        self._clock.count_other_ranks(n_envs)  # env.step() follows this call
        return actions

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
        # As SB3, then the ranks agree on the rollout (one Allreduce): a stop on any rank, signals, steps, episodes.
        if self.stopped_by_signal is not None:
            # All ranks agreed at the end of the last rollout, whose updates are done: stop on this boundary.
            return RolloutReturn(0, 0, continue_training=False)
        self._collector.start_rollout()
        rollout = super().collect_rollouts(
            env, callback, train_freq, replay_buffer, action_noise, learning_starts, log_interval
        )
        if self._mesh.role == "actor":  # post the transitions, take the learner's weights and grants
            rollout = self._actor.after_rollout(rollout)
        return self._collector.finish_rollout(rollout)

    def dump_logs(self) -> None:
        # As SB3, with the episode statistics of every rank (exchanged at the end of the last rollout).
        with self._collector.episode_buffers_of_the_job():
            super().dump_logs()

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        # As SB3, with the update behind the learner: gradients averaged over ranks before clipping, NaN checks.
        if self._mesh.role == "actor":  # an actor acts with the learner's weights
            return
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        # Update learning rate according to schedule
        self._update_learning_rate(self.policy.optimizer)

        losses = []
        with self._learner.updates(gradient_steps, batch_size) as learner:
            for _ in range(gradient_steps):
                # Sample replay buffer (with importance weights when prioritized)
                replay_data, weights = learner.sample(batch_size)
                # The TD loss (Double DQN targets with double_q) and its gradients, averaged over ranks
                loss, td_errors = learner.gradients(replay_data, self.gamma, self.double_q, weights)
                losses.append(loss)
                # Clip gradient norm
                grad_norm = learner.clip_grad_norm_(self.max_grad_norm)
                # Optimize the policy, once the loss and the norm are checked finite
                learner.step(loss, grad_norm, td_errors)

        # Increase update counter
        self._n_updates += gradient_steps

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", np.mean(losses))
        sync_ms = self._learner.pop_mean_sync_ms()
        if sync_ms is not None:
            self.logger.record("time/mpi_sync_ms", sync_ms)

    def learn(
        self: SelfParallelDQN,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "ParallelDQN",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfParallelDQN:
        # As SB3 (total_timesteps counts global steps; every rank calls it), with this class' tensorboard run name.
        if self._mesh.role == "replica":
            return super().learn(total_timesteps, callback, log_interval, tb_log_name, reset_num_timesteps, progress_bar)
        # The asynchronous mode: an actor runs SB3's loop (collection only), a learner the learner loop.
        if getattr(self, "_channel", None) is None:
            self._channel = asynchronous.Channel("the asynchronous mode's transitions and weights")  # collective
        if self._mesh.role == "actor":
            self._actor = asynchronous.Actor(self, self._channel, self._layout)
            super().learn(total_timesteps, callback, log_interval, tb_log_name, reset_num_timesteps, progress_bar)
            self._actor.finish()
            return self
        total_timesteps, callback = self._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar
        )
        self.async_stats = asynchronous.LearnerLoop(self, self._channel, self._layout).learn(
            total_timesteps, callback, log_interval
        )
        return self

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ) -> tuple[int, BaseCallback]:
        # As SB3, after the lockstep check and rank 0's weights; restarted collection cuts the stored episodes.
        self.stopped_by_signal = None
        if self._world_size > 1:
            start = 0 if reset_num_timesteps else self.num_timesteps
            check_model(self, total_timesteps=total_timesteps, reset_num_timesteps=reset_num_timesteps, start=start)
            # Here rather than in load()/set_parameters(), which stay free of collectives (one rank may load alone).
            broadcast_module_(self.policy, group=self._mesh.weights_group)
            broadcast_optimizer_(self.policy.optimizer, group=self._mesh.data_group)
            if self._rank != 0:
                self.set_logger(Logger(folder=None, output_formats=[]))  # only rank 0 writes stdout, csv, tensorboard
        # Another layout since the last run: the call counter is rescaled, so that target updates keep their phase.
        self._global_envs = self._clock.start_learn(reset_num_timesteps, self._global_envs)
        if self._episode_stats_rank != self._rank:
            # Loaded from rank 0's file: these are rank 0's episodes, which rank 0 itself counts in the global means.
            self.ep_info_buffer = self.ep_success_buffer = None  # SB3 starts new ones below
        self._episode_stats_rank = self._rank
        if reset_num_timesteps or self._last_obs is None:
            # SB3 resets the envs below: the newest stored transition of each env is the end of a cut episode.
            truncate_last_transitions(self.replay_buffer)
        total_timesteps, callback = super()._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar
        )
        model_parallel.check_identical_observations(self, self._mesh)
        return total_timesteps, callback

    def _init_callback(self, callback: MaybeCallback, progress_bar: bool = False) -> BaseCallback:
        # As SB3, but with several ranks one progress bar for the job (on rank 0) that counts every rank's steps.
        if progress_bar and self._world_size > 1:
            callback, progress_bar = with_global_progress_bar(callback, self._rank == 0), False
        return super()._init_callback(callback, progress_bar)

    def save(self, path: str | pathlib.Path | io.BufferedIOBase, exclude: Any = None, include: Any = None) -> None:
        """As SB3's, by rank 0, atomically; a split model or sharded optimizer is gathered first (call it on every rank).
        Returns once rank 0's file is complete, on every rank that calls it (see checkpoints.write_on_root)."""
        with model_parallel.whole_model(self, self._learner, self._mesh, self.shard_optimizer):
            checkpoints.write_on_root(path, "zip", lambda target: DQN.save(self, target, exclude, include))

    def memory_report(self) -> dict[str, int]:
        """Bytes this rank holds: ``parameters``, ``gradients``, ``optimizer`` (state) and ``replay_buffer``."""
        return model_parallel.memory_report(self, self._learner)

    def save_replay_buffer(self, path: str | pathlib.Path | io.BufferedIOBase) -> None:
        """As SB3's, atomically, each rank its own: rank r of several writes ``<path>.rank<r>.pkl``; call it on every
        rank, it returns once every shard is written (see checkpoints.save_shard)."""
        checkpoints.save_shard(path, lambda target: DQN.save_replay_buffer(self, target))

    def load_replay_buffer(self, path: str | pathlib.Path | io.BufferedIOBase, truncate_last_traj: bool = True) -> None:
        """As SB3's, each rank its shard, on any world size (rank r loads r mod W_saved), fitted to the model's settings."""
        built, shard = self.replay_buffer, checkpoints.shard_to_load(path)
        super().load_replay_buffer(shard, truncate_last_traj)
        self.replay_buffer = fitted_replay_buffer(self, built, str(shard))

    def _excluded_save_params(self) -> list[str]:
        # As SB3, plus this process' runtime state and mesh (a file loads whole unless load() is given a mesh shape).
        runtime = ["_world_size", "_rank", "_collector", "_learner", "_clock", "stopped_by_signal", "model_parallel_size"]
        runtime += ["learner_ranks", "_layout", "_channel", "_actor", "async_stats"]
        return [*super()._excluded_save_params(), *runtime, "shard_optimizer", "_mesh"]
