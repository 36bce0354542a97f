"""
The asynchronous mode (``ParallelDQN(..., learner_ranks=L)`` under ``mpirun -np W``): ranks ``0 .. L-1`` learn, the
other ``W - L`` act, as in Ape-X (Horgan et al. 2018, https://arxiv.org/abs/1803.00933) and Acme with Reverb.

- :class:`Actor`: an actor rank runs SB3's collection path (``collect_rollouts``, exploration over the actors' global
  steps, callbacks, ``Monitor`` episodes) with an :class:`Outbox` in place of its replay buffer. After each rollout
  it posts the new transitions to its learner in chunks, without waiting (:class:`~sb3_parallel_dqn.distributed.
  channels.Channel`), takes the newest weights the learner posted, and waits only where the rate limiter says the
  learner is behind. The actors agree on their rollouts among themselves (the synchronous mode's agreement, on
  their own group): ``total_timesteps`` counts their env steps, and a stop on one stops all.
- :class:`LearnerLoop`: the learner rank's ``learn``. It writes the received transitions into its replay buffer
  with the buffer's own ``add`` (so every buffer class, n-step returns and prioritized replay work as in SB3), runs
  the model's ``train`` whenever :class:`~sb3_parallel_dqn.engine.rate_limiter.SampleToInsertRatio` allows, updates
  the target every ``target_update_interval`` received env steps, calls the callbacks and logs, and posts its
  weights every ``weight_sync_interval`` updates. At the end it drains every actor's messages (inserted equals
  sent), makes the updates the ratio still owes, and sends the final weights to every actor, so that each rank
  returns from ``learn`` with the learner's weights.

Messages (first item, then the payload): actor to learner ``("rows", rows, episodes, successes, version)`` and
``("done", sent)``; learner to actor ``("weights", version, q_net, allowance)``, ``("stop",)`` (a callback stopped
training) and ``("final", version, policy)``. ``allowance`` is how many transitions the actor may have sent in all.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch as th
from stable_baselines3.common.type_aliases import RolloutReturn, TrainFreq
from stable_baselines3.common.utils import polyak_update

from sb3_parallel_dqn import compat
from sb3_parallel_dqn.distributed import comm
from sb3_parallel_dqn.distributed.channels import Channel
from sb3_parallel_dqn.engine.rate_limiter import SampleToInsertRatio

if TYPE_CHECKING:
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback

#: Transitions per chunk an actor posts (at least one rollout's): fewer, larger messages.
CHUNK_TRANSITIONS = 32


@dataclasses.dataclass(frozen=True)
class Layout:
    """Which ranks learn and which act: ``0 .. learner_ranks - 1`` learn; actor ``a`` feeds learner ``a mod L``."""

    learner_ranks: int
    world_size: int

    @property
    def actors(self) -> list[int]:
        return list(range(self.learner_ranks, self.world_size))

    def learner_of(self, actor: int) -> int:
        return (actor - self.learner_ranks) % self.learner_ranks

    def actors_of(self, learner: int) -> list[int]:
        return [actor for actor in self.actors if self.learner_of(actor) == learner]


def check_layout(learner_ranks: int, world_size: int) -> Layout:
    """Refuse, before any collective, a layout the asynchronous mode does not have (ValueError, naming it)."""
    if not isinstance(learner_ranks, int) or learner_ranks < 1:
        raise ValueError(f"learner_ranks must be None (the synchronous mode) or an int >= 1, not {learner_ranks!r}")
    if world_size <= learner_ranks:
        raise ValueError(
            f"learner_ranks={learner_ranks} needs at least {learner_ranks + 1} MPI ranks (mpirun -np W: W - L actors), "
            f"this job has {world_size}"
        )
    if learner_ranks > 1:
        raise ValueError(
            "learner_ranks > 1 (learners that average gradients) is not available yet: use learner_ranks=1 with any "
            "number of actors, or the synchronous mode"
        )
    return Layout(learner_ranks, world_size)


def check_settings(model: DQN) -> Layout:
    """Refuse, on every rank alike, a setting the asynchronous mode does not have (ValueError, naming it)."""
    layout = check_layout(model.learner_ranks, comm.world_size())  # type: ignore[attr-defined]
    if model.model_parallel_size != 1 or model.shard_optimizer:  # type: ignore[attr-defined]
        raise ValueError("learner_ranks does not compose with model_parallel_size > 1 or shard_optimizer yet")
    if _train_freq(model).unit.value != "step":
        raise ValueError("learner_ranks needs train_freq in steps (actors post their transitions per rollout of steps)")
    if not getattr(model, "weight_sync_interval", 1) >= 1:
        raise ValueError(f"weight_sync_interval must be >= 1, not {model.weight_sync_interval}")  # type: ignore[attr-defined]
    given = getattr(model, "samples_per_insert", None)
    if given is not None and not given > 0:
        raise ValueError(f"samples_per_insert must be None or > 0, not {given}")
    several = len(layout.actors) > layout.learner_ranks
    frames = type(model.replay_buffer).__name__ == "FrameReplayBuffer"
    if several and (model.n_steps > 1 or model.optimize_memory_usage or frames):
        # Each added row is one step of every env of one actor: consecutive rows of a learner's buffer come from
        # different actors, which n-step returns, optimize_memory_usage and frame stacks would chain.
        raise ValueError(
            "with several actors per learner, n_steps > 1, optimize_memory_usage and FrameReplayBuffer are not "
            "supported (each needs consecutive rows of one env stream): use one actor per learner"
        )
    return layout


def samples_per_insert(model: DQN) -> float:
    """``model.samples_per_insert``, or the ratio its settings imply: ``batch_size * gradient_steps / (train_freq *
    n_envs)`` (``gradient_steps=-1``: one per env step call, as SB3), so that an entry means the same in both modes."""
    given = getattr(model, "samples_per_insert", None)
    if given is not None:
        return float(given)
    steps = _train_freq(model).frequency if model.gradient_steps < 0 else model.gradient_steps
    return model.batch_size * steps / (_train_freq(model).frequency * model.n_envs)


def rate_limiter(model: DQN, n_actors: int) -> tuple[SampleToInsertRatio, int]:
    """
    The limiter of one learner fed by ``n_actors`` actors, and the rows per chunk each actor posts; the actors build
    the same one to know their first allowance. The band is two chunks of every actor wide (they need not wait for
    each other's messages) and at least two batches (each grant allows an update); the learner runs at most one
    batch ahead of the exact ratio, so that the measured one stays close to it at any number of actors.
    """
    ratio = samples_per_insert(model)
    chunk_rows = max(_train_freq(model).frequency, math.ceil(CHUNK_TRANSITIONS / model.n_envs))
    band = max(2.0 * model.batch_size, ratio * 2 * chunk_rows * model.n_envs * n_actors)
    limiter = SampleToInsertRatio(ratio, max(model.learning_starts, 1), band, sample_ahead=model.batch_size)
    return limiter, chunk_rows


def _train_freq(model: DQN) -> TrainFreq:
    return cast(TrainFreq, model.train_freq)  # SB3 converts it to a TrainFreq in _setup_model


def flat_parameters(module: th.nn.Module) -> np.ndarray:
    return th.nn.utils.parameters_to_vector(module.parameters()).detach().cpu().numpy()


def load_flat_parameters(module: th.nn.Module, flat: np.ndarray) -> None:
    device = next(module.parameters()).device
    with th.no_grad():
        th.nn.utils.vector_to_parameters(th.as_tensor(flat, device=device), module.parameters())


def _copy(value: Any) -> Any:
    return {key: np.array(item) for key, item in value.items()} if isinstance(value, dict) else np.array(value)


class Outbox:
    """
    An actor's stand-in for the replay buffer: SB3's ``collect_rollouts`` ``add``s here, and :class:`Actor` posts
    the rows to the learner, whose buffer (``stands_for``) ``add``s them. Holds one chunk at most.
    """

    def __init__(self, n_envs: int, stands_for: type) -> None:
        self.n_envs, self.stands_for = n_envs, stands_for
        self.rows: list[tuple[Any, ...]] = []
        self.episodes: list[dict[str, float]] = []
        self.successes: list[float] = []

    def add(self, obs: Any, next_obs: Any, action: np.ndarray, reward: np.ndarray, done: np.ndarray, infos: list) -> None:
        timeouts = np.array([bool(info.get("TimeLimit.truncated", False)) for info in infos])
        self.rows.append((_copy(obs), _copy(next_obs), np.array(action), np.array(reward), np.array(done), timeouts))
        for info in infos:
            if "episode" in info:
                self.episodes.append({"r": float(info["episode"]["r"]), "l": float(info["episode"]["l"])})
            if "is_success" in info and bool(np.any(done)):
                self.successes.append(float(info["is_success"]))

    def size(self) -> int:
        return len(self.rows) * self.n_envs

    def take(self) -> tuple[list[tuple[Any, ...]], list[dict[str, float]], list[float]]:
        taken = self.rows, self.episodes, self.successes
        self.rows, self.episodes, self.successes = [], [], []
        return taken


class Actor:
    """
    The actor role of ``model`` on this rank (see the module docstring).

    :param model: the actor's model, whose replay buffer is an :class:`Outbox`
    :param channel: the job's channel
    :param layout: which ranks learn and act
    """

    def __init__(self, model: DQN, channel: Channel, layout: Layout) -> None:
        self.model, self.channel, self.layout = model, channel, layout
        self.learner = layout.learner_of(comm.rank())
        siblings = len(layout.actors_of(self.learner))
        limiter, self.chunk_rows = rate_limiter(model, siblings)
        self.siblings = siblings
        self.allowance = limiter.insert_allowance() // siblings  # until the learner's first grant
        self.sent = 0  # transitions posted
        self.version = 0  # the learner's update count of the weights this actor acts with
        self.stop_requested = False

    def _handle(self, message: tuple[Any, ...]) -> bool:
        """Apply one message from the learner; True if it was the final one."""
        kind = message[0]
        if kind == "weights":
            _, version, flat, allowance = message
            if version >= self.version:
                load_flat_parameters(self.model.q_net, flat)
                self.version = version
            self.allowance = max(self.allowance, allowance)
        elif kind == "stop":
            self.stop_requested = True
        elif kind == "final":
            _, self.version, flat = message
            load_flat_parameters(self.model.policy, flat)
            return True
        return False

    def _take_messages(self) -> None:
        while (taken := self.channel.take(self.learner)) is not None:
            self._handle(taken[1])

    def _post(self) -> None:
        outbox = self.model.replay_buffer
        assert isinstance(outbox, Outbox)
        if outbox.rows:
            n = outbox.size()
            rows, episodes, successes = outbox.take()
            self.channel.post(("rows", rows, episodes, successes, self.version), self.learner)
            self.sent += n

    def after_rollout(self, rollout: RolloutReturn) -> RolloutReturn:
        """
        After each rollout: take the learner's messages, post a full chunk, and wait while this actor has sent all
        the learner allows (its grants arrive with its weights). A stop the learner asked for ends this rollout's
        agreement with a stop, so that every actor stops on the same rollout.
        """
        self._take_messages()
        outbox = self.model.replay_buffer
        assert isinstance(outbox, Outbox)
        if len(outbox.rows) >= self.chunk_rows or self.sent + outbox.size() > self.allowance:
            self._post()
        what = f"the learner's grant to actor rank {comm.rank()} (the asynchronous mode's rate limiter)"
        while self.sent >= self.allowance and not self.stop_requested:
            self._handle(self.channel.wait_for(what, [self.learner], source=self.learner)[1])
        return rollout._replace(continue_training=False) if self.stop_requested else rollout

    def finish(self) -> None:
        """After SB3's loop: post the rest, say so, and wait for the learner's final weights."""
        self._post()
        self.channel.post(("done", self.sent), self.learner)
        what = f"the learner's final weights (the end of learn() on actor rank {comm.rank()})"
        while not self._handle(self.channel.wait_for(what, [self.learner], source=self.learner)[1]):
            pass
        self.channel.flush(f"the delivery of actor rank {comm.rank()}'s last transitions", [self.learner])
        self.stop_requested = False
        self.allowance = self.sent + rate_limiter(self.model, self.siblings)[0].insert_allowance() // self.siblings


@dataclasses.dataclass
class LearnerStats:
    """What the learner measured in one ``learn`` (``model.async_stats``; logged under ``async/``)."""

    inserted: int = 0  # transitions written into replay
    sent: int = 0  # transitions the actors said they posted (known at the end)
    updates: int = 0
    samples_per_insert: float | None = None  # measured, after learning_starts
    target_samples_per_insert: float = 0.0
    env_steps_per_s: float = 0.0
    updates_per_s: float = 0.0
    update_share: float = 0.0  # share of the wall time spent in train()
    weight_lag: float = 0.0  # mean updates between the learner's weights and those an actor acted with
    seconds: float = 0.0


class LearnerLoop:
    """
    The learner role's ``learn`` (see the module docstring).

    :param model: the learner's model
    :param channel: the job's channel
    :param layout: which ranks learn and act
    """

    def __init__(self, model: DQN, channel: Channel, layout: Layout) -> None:
        self.model, self.channel, self.layout = model, channel, layout
        self.actors = layout.actors_of(comm.rank())

    def learn(self, total_timesteps: int, callback: BaseCallback, log_interval: int | None) -> LearnerStats:
        """Train from the actors' transitions until they are all done (``callback``: set up by ``_setup_learn``)."""
        model, actors = self.model, self.actors
        limiter, _ = rate_limiter(model, len(actors))
        stats = LearnerStats(target_samples_per_insert=limiter.samples_per_insert)
        self.limiter, self.stats, self.callback = limiter, stats, callback
        self.total_timesteps, self.log_interval = total_timesteps, log_interval
        self.done: dict[int, int] = {}
        self.episodes = 0  # received in this learn(): SB3 dumps its logs every log_interval episodes
        self.rows_since_call = 0
        self.target_updates = model.num_timesteps // model.target_update_interval
        self.granted = dict.fromkeys(actors, limiter.insert_allowance() // len(actors))
        self.posted_version, self.stopping = 0, False
        self.lags: list[int] = []
        self.start_steps, started, training_s = model.num_timesteps, time.perf_counter(), 0.0
        callback.on_training_start(locals(), globals())
        callback.on_rollout_start()
        what = f"the actors' transitions (learner rank {comm.rank()} of the asynchronous mode)"
        while True:
            self._take_messages()
            steps = self._updates_allowed()
            if steps > 0:
                began = time.perf_counter()
                model.train(steps, model.batch_size)
                training_s += time.perf_counter() - began
                limiter.sampled(steps * model.batch_size)
                stats.updates += steps
                if stats.updates - self.posted_version >= getattr(model, "weight_sync_interval", 1):
                    self._post_weights()
                continue
            if len(self.done) == len(actors):
                break
            self._post_weights(only_if_granting=True)  # an actor may wait for this grant
            self._handle(*self.channel.wait_for(what, actors))
        # The end: the updates the ratio still owes, then the final weights to every actor.
        while limiter.on_track(model.batch_size):
            began = time.perf_counter()
            model.train(1, model.batch_size)
            training_s += time.perf_counter() - began
            limiter.sampled(model.batch_size)
            stats.updates += 1
        flat = th.nn.utils.parameters_to_vector(model.policy.parameters()).detach().cpu().numpy()
        for actor in actors:
            self.channel.post(("final", stats.updates, flat), actor)
        self.channel.flush(f"the delivery of the final weights (learner rank {comm.rank()})", actors)
        callback.on_rollout_end()
        seconds = time.perf_counter() - started
        stats.sent, stats.inserted = sum(self.done.values()), limiter.inserts
        stats.samples_per_insert, stats.seconds = limiter.ratio(), seconds
        stats.env_steps_per_s = (model.num_timesteps - self.start_steps) / seconds
        stats.updates_per_s, stats.update_share = stats.updates / seconds, training_s / seconds
        stats.weight_lag = float(np.mean(self.lags)) if self.lags else 0.0
        callback.on_training_end()
        return stats

    def _updates_allowed(self) -> int:
        """How many updates the limiter allows now (at most 16, so that messages are taken between them)."""
        limiter, batch = self.limiter, self.model.batch_size
        if self.model.num_timesteps <= self.model.learning_starts or (self.stopping and len(self.done) < len(self.actors)):
            return 0
        steps = 0
        while steps < 16 and limiter.can_sample((steps + 1) * batch):
            steps += 1
        return steps

    def _take_messages(self) -> None:
        while (taken := self.channel.take()) is not None:
            self._handle(*taken)

    def _handle(self, source: int, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "done":
            self.done[source] = message[1]
            return
        assert kind == "rows", message
        _, rows, episodes, successes, version = message
        model = self.model
        self.lags.append(self.stats.updates - version)
        for obs, next_obs, action, reward, done, timeouts in rows:
            infos = [{"TimeLimit.truncated": bool(timeout)} for timeout in timeouts]
            model.replay_buffer.add(obs, next_obs, action, reward, done, infos)  # type: ignore[union-attr]
            model.num_timesteps += len(done)
            self.limiter.inserted(len(done))
            self._on_step()
        compat.refresh_progress(model)  # the learning rate's and prioritized replay's schedules
        assert model.ep_info_buffer is not None and model.ep_success_buffer is not None
        model.ep_info_buffer.extend(episodes)
        model.ep_success_buffer.extend(successes)
        compat.count_episodes(model, len(episodes))
        before, self.episodes = self.episodes, self.episodes + len(episodes)
        if self.log_interval and self.episodes // self.log_interval > before // self.log_interval:
            self._dump_logs()

    def _on_step(self) -> None:
        """After each received row: the target update every ``target_update_interval`` env steps, and one callback
        step per row of every actor (as one ``env.step()`` call of every rank in the synchronous mode)."""
        model = self.model
        due = model.num_timesteps // model.target_update_interval
        if due > self.target_updates:
            self.target_updates = due
            polyak_update(model.q_net.parameters(), model.q_net_target.parameters(), model.tau)
            polyak_update(model.batch_norm_stats, model.batch_norm_stats_target, 1.0)
        self.rows_since_call += 1
        if self.rows_since_call == len(self.actors):
            self.rows_since_call = 0
            if not self.callback.on_step() and not self.stopping:
                self.stopping = True
                for actor in self.actors:
                    self.channel.post(("stop",), actor)

    def _post_weights(self, only_if_granting: bool = False) -> None:
        """Post the weights and each actor's allowance (``only_if_granting``: only where the allowance grew)."""
        share = self.limiter.insert_allowance() // len(self.actors)
        if only_if_granting and all(self.granted[actor] >= share for actor in self.actors):
            return
        flat = flat_parameters(self.model.q_net)
        for actor in self.actors:
            self.channel.post(("weights", self.stats.updates, flat, share), actor)
            self.granted[actor] = share
        self.posted_version = self.stats.updates

    def _dump_logs(self) -> None:
        model, stats, limiter = self.model, self.stats, self.limiter
        model.logger.record("async/samples_per_insert", limiter.ratio() or 0.0)
        model.logger.record("async/weight_lag", float(np.mean(self.lags[-100:])) if self.lags else 0.0)
        model.logger.record("async/updates", stats.updates)
        model.dump_logs()  # type: ignore[attr-defined]
