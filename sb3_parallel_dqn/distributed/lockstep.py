"""
The rules that keep W ranks in lockstep, each written once: global step counts, per-rank seeds, the settings every
rank must share, and the one small message at the end of each rollout through which the ranks agree on what
happened (a callback stop, a signal, the step and episode counts).

With D model replicas (the data-parallel ranks: D = W ranks without model parallelism, see
:mod:`~sb3_parallel_dqn.distributed.mesh`) stepping ``n_envs`` envs each, one ``env.step()`` call of a rank is
``n_envs * D`` global steps (:func:`global_envs`); SB3's counters (``num_timesteps``, ``learning_starts``,
``target_update_interval``, callback frequencies) count global steps. Env ``i`` of replica ``d`` is global env
``d * n_envs + i`` and gets the seed ``seed + d * n_envs + i`` (:func:`env_seed`): replica 0 is seeded exactly as
SB3's one process, and the ranks of one replica (its model-parallel shards) step identical envs with identical random
streams, so that they take the same actions and store the same transitions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from sb3_parallel_dqn import compat
from sb3_parallel_dqn.distributed import comm, mesh


class LockstepError(ValueError):
    """A setting differs across MPI ranks (or cannot be kept in lockstep), which would deadlock the job."""


# Each rule takes the mesh it counts in: a model passes its own; None means the current one (see mesh.setup).


def global_envs(n_envs: int, grid: mesh.Mesh | None = None) -> int:
    """Envs stepped by one ``env.step()`` call of every replica together: the global steps per call."""
    return n_envs * (grid or mesh.current()).data_parallel_size


def per_rank(global_steps: int, grid: mesh.Mesh | None = None) -> int:
    """This rank's (replica's) share of ``global_steps`` (at least 1), for counters that count this rank's steps."""
    return max(global_steps // (grid or mesh.current()).data_parallel_size, 1)


def calls_per(global_steps: int, n_envs: int, grid: mesh.Mesh | None = None) -> int:
    """How many ``env.step()`` calls of one rank make ``global_steps`` global steps (at least 1)."""
    return max(global_steps // global_envs(n_envs, grid), 1)


def global_env_index(n_envs: int, index: int = 0, replica: int | None = None, grid: mesh.Mesh | None = None) -> int:
    """The index in the whole job of env ``index`` of ``replica`` (default: this rank's): ``replica * n_envs + index``."""
    return ((grid or mesh.current()).data_rank if replica is None else replica) * n_envs + index


def env_seed(seed: int, n_envs: int, index: int = 0, replica: int | None = None, grid: mesh.Mesh | None = None) -> int:
    """
    The seed of env ``index`` of ``replica`` (default: this rank's; ``index=0``: the replica's base seed):
    ``seed + replica * n_envs + index``.
    """
    return seed + global_env_index(n_envs, index, replica, grid)


def check_train_freq(frequency: int, unit: str, world_size: int) -> None:
    """Refuse ``train_freq`` in episodes with several ranks: ranks finish episodes at different times."""
    if unit != "step" and world_size > 1:
        raise LockstepError(
            f"train_freq=({frequency}, {unit!r}) counts episodes, which ranks finish at different times: with several "
            "MPI ranks, give train_freq in steps."
        )


def check_same_settings(settings: dict[str, Any]) -> None:
    """
    Raise :class:`LockstepError` on every rank if any value of ``settings`` differs across ranks, naming each such
    setting with every rank's value. One ``allgather`` of the (small, picklable) dict; call it on every rank.
    """
    by_rank = comm.allgather_object(settings, what="the lockstep check of the ParallelDQN constructor / learn()")
    differing = [
        f"{name}: {[values[name] for values in by_rank]}"
        for name in settings
        if any(values[name] != settings[name] for values in by_rank)
    ]
    if differing:
        raise LockstepError(
            f"These settings differ across MPI ranks (values by rank): {'; '.join(differing)}. Every rank must use the "
            "same ones, or the ranks would call collective operations a different number of times and deadlock."
        )


@dataclasses.dataclass(frozen=True)
class RolloutAgreement:
    """
    What every rank agrees on at the end of a rollout.

    :param stop: a callback stopped training on some rank
    :param signal: a stop signal that some rank received (see :mod:`sb3_parallel_dqn.interrupt`), SIGTERM first
    :param n_steps: env-step calls of all ranks in this rollout (they differ only when a callback stopped one early)
    :param n_episodes: episodes that all ranks finished in this rollout
    :param episode_means: over every rank's recent episodes: ``"r"`` and ``"l"`` (return and length) when there are
        any, ``"success"`` when any rank reports success; empty with one process (SB3 logs its own buffers then)
    """

    stop: bool
    signal: signal.Signals | None
    n_steps: int
    n_episodes: int
    episode_means: dict[str, float]


def agree_on_rollout(
    stop: bool,
    n_steps: int,
    n_episodes: int,
    episode_infos: Iterable[dict[str, float]],
    successes: Iterable[float],
    local_signal: signal.Signals | None,
    grid: mesh.Mesh | None = None,
) -> RolloutAgreement:
    """
    One ``Allreduce`` of 10 numbers at the end of every rollout: whether any rank stopped (so that all stop before
    ``train()``, whose collectives would otherwise deadlock), received a signal, how many steps and episodes all
    replicas made, and the sums behind the episode statistics that rank 0 logs for the whole job.
    """
    if comm.world_size() == 1:
        return RolloutAgreement(stop, local_signal, n_steps, n_episodes, {})
    infos, successes = list(episode_infos), list(successes)
    # The shards of one replica step identical envs: only the first counts its steps and episodes.
    own = float((grid or mesh.current()).model_rank == 0)
    sums = comm.allreduce_sum_(
        np.array(
            [
                float(stop),
                own * n_steps,
                own * n_episodes,
                own * sum(info["r"] for info in infos),
                own * sum(info["l"] for info in infos),
                own * len(infos),
                own * sum(successes),
                own * len(successes),
                float(local_signal == signal.SIGTERM),
                float(local_signal == signal.SIGINT),
            ],
            dtype=np.float64,
        ),
        what="the end-of-rollout agreement (collect_rollouts, in learn())",
    )
    any_stop, total_steps, total_episodes, sum_r, sum_l, n_infos, sum_success, n_success, n_sigterm, n_sigint = sums
    means = {"r": sum_r / n_infos, "l": sum_l / n_infos} if n_infos > 0 else {}
    if n_success > 0:
        means["success"] = sum_success / n_success
    received = signal.SIGTERM if n_sigterm > 0 else signal.SIGINT if n_sigint > 0 else None
    return RolloutAgreement(bool(any_stop), received, int(total_steps), int(total_episodes), means)


def realign_after_stop(model: Any, stopped: bool) -> None:
    """
    After a rollout that a callback stopped on some rank(s), make the per-step state that followed each rank's own step
    count the job's again: the ranks made different numbers of steps in that rollout. **Collective** when ``stopped``
    (it is the same on every rank: the agreement decided it), free otherwise.

    - The progress (learning rate, exploration, prioritized replay's beta) is recomputed from the step count all ranks
      agreed on. A ``train()`` right after ``learn()``, or the next ``learn()``'s first update, would otherwise use
      each rank's own learning rate, and the weights would drift apart.
    - The target-update counter and the target network are taken from the replica that went furthest. It made every
      target update that fell in the rollout.
    """
    if not stopped or comm.world_size() == 1:
        return
    from sb3_parallel_dqn.distributed.gradients import broadcast_module_

    model.exploration_rate = model.exploration_schedule(compat.refresh_progress(model))
    grid = model._mesh
    own_calls = np.array([compat.target_update_calls(model)], dtype=np.int64)
    calls = comm.allgather(
        own_calls, group=grid.data_group, what="the realignment after a callback stop (collect_rollouts)"
    ).reshape(-1)
    compat.set_target_update_calls(model, int(calls.max()))
    broadcast_module_(model.q_net_target, root=int(calls.argmax()), group=grid.data_group)


@contextlib.contextmanager
def episode_buffers_of_the_job(model: Any) -> Iterator[None]:
    """
    Within the block, SB3's ``model.ep_info_buffer`` and ``ep_success_buffer`` (whose means SB3's ``dump_logs`` logs)
    are stand-ins with the means over every replica's episodes, from the last :func:`agree_on_rollout`; the rank's
    own buffers come back afterwards. Nothing changes with one process, or before the first rollout.
    """
    means = model._global_episode_means
    local_buffers = model.ep_info_buffer, model.ep_success_buffer
    if means is not None:
        model.ep_info_buffer = deque([{"r": means["r"], "l": means["l"]}] if "r" in means else [])
        model.ep_success_buffer = deque([means["success"]] if "success" in means else [])
    try:
        yield
    finally:
        model.ep_info_buffer, model.ep_success_buffer = local_buffers


def check_model(model: Any, **learn_settings: Any) -> None:
    """
    Refuse, on every rank and before any training collective, a ``ParallelDQN`` whose settings differ across ranks:
    what changes the number or the size of the collectives (a deadlock, or an error inside MPI), and what would make
    the ranks train different models; plus ``learn``'s own settings. The parameter shapes are the whole network's
    (shards may differ in size).
    """
    from sb3_parallel_dqn.distributed.tensor_parallel import whole_shapes

    check_train_freq(model.train_freq.frequency, model.train_freq.unit.value, comm.world_size())
    buffer_class = type(model.replay_buffer) if model.replay_buffer is not None else model.replay_buffer_class
    names = ("n_envs", "gradient_steps", "learning_starts", "sync_check_interval", "batch_size", "n_steps", "double_q",
             "model_parallel_size", "shard_optimizer")  # fmt: skip
    settings = {name: getattr(model, name) for name in names} | {
        "train_freq": model.train_freq.frequency,
        "replay_buffer_class": getattr(buffer_class, "__qualname__", None),
        "parameters": whole_shapes(model.policy),
    }
    check_same_settings({**settings, **learn_settings})
