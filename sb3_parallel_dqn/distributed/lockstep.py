"""
The rules that keep W ranks in lockstep, each written once: global step counts, per-rank seeds, the check that
every rank shares a set of settings, and the one small message at the end of each rollout through which the ranks
agree on what happened (a callback stop, a signal, the step and episode counts). Plain values in, plain values out:
this module knows no model (the algorithm's side is :mod:`sb3_parallel_dqn.engine`).

With D model replicas (the data-parallel ranks: D = W ranks without model parallelism, see
:mod:`~sb3_parallel_dqn.distributed.mesh`) stepping ``n_envs`` envs each, one ``env.step()`` call of a rank is
``n_envs * D`` global steps (:func:`global_envs`); SB3's counters (``num_timesteps``, ``learning_starts``,
``target_update_interval``, callback frequencies) count global steps. Env ``i`` of replica ``d`` is global env
``d * n_envs + i`` and gets the seed ``seed + d * n_envs + i`` (:func:`env_seed`): replica 0 is seeded exactly as
SB3's one process, and the ranks of one replica (its model-parallel shards) step identical envs with identical random
streams, so that they take the same actions and store the same transitions.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Iterable
from typing import Any

import numpy as np

from sb3_parallel_dqn.distributed import comm, mesh


class LockstepError(ValueError):
    """A setting differs across MPI ranks (or cannot be kept in lockstep), which would deadlock the job."""


# Each rule takes the mesh it counts in explicitly (a model passes its own): nothing depends on which was built first.


def global_envs(n_envs: int, grid: mesh.Mesh) -> int:
    """Envs stepped by one ``env.step()`` call of every replica together: the global steps per call."""
    return n_envs * grid.data_parallel_size


def per_rank(global_steps: int, grid: mesh.Mesh) -> int:
    """This rank's (replica's) share of ``global_steps`` (at least 1), for counters that count this rank's steps."""
    return max(global_steps // grid.data_parallel_size, 1)


def calls_per(global_steps: int, n_envs: int, grid: mesh.Mesh) -> int:
    """How many ``env.step()`` calls of one rank make ``global_steps`` global steps (at least 1)."""
    return max(global_steps // global_envs(n_envs, grid), 1)


def global_env_index(n_envs: int, index: int, replica: int) -> int:
    """The index in the whole job of env ``index`` of ``replica`` (a data-parallel rank): ``replica * n_envs + index``."""
    return replica * n_envs + index


def env_seed(seed: int, n_envs: int, index: int, replica: int) -> int:
    """The seed of env ``index`` of ``replica`` (``index=0``: the replica's base seed): ``seed + replica * n_envs + index``."""
    return seed + global_env_index(n_envs, index, replica)


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
    grid: mesh.Mesh,
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
    own = float(grid.model_rank == 0)
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
        group=grid.rollout_group,
        what="the end-of-rollout agreement (collect_rollouts, in learn())",
    )
    any_stop, total_steps, total_episodes, sum_r, sum_l, n_infos, sum_success, n_success, n_sigterm, n_sigint = sums
    means = {"r": sum_r / n_infos, "l": sum_l / n_infos} if n_infos > 0 else {}
    if n_success > 0:
        means["success"] = sum_success / n_success
    received = signal.SIGTERM if n_sigterm > 0 else signal.SIGINT if n_sigint > 0 else None
    return RolloutAgreement(bool(any_stop), received, int(total_steps), int(total_episodes), means)
