"""
The mesh of a job: W ranks as W / M model replicas (the data-parallel ranks) of M consecutive ranks each (the
tensor-parallel shards of one Q-network), laid out as Megatron-LM lays out its tensor- and data-parallel groups.

With ``model_parallel_size=M``, ranks ``r`` and ``r'`` hold shards of the same replica when ``r // M == r' // M``
(their *model group*, which runs every forward and backward pass together) and the same shard of different replicas
when ``r % M == r' % M`` (their *data group*, which averages gradients). With M = 1 (the default) each rank is a
replica of its own, and the data group is the world.

:func:`get` makes the two sub-communicators of a size once (``Split``: collective, so it runs where every rank
runs, in ``ParallelDQN``'s constructor or ``load(..., model_parallel_size=M)`` on every rank). Each model keeps its
own mesh, passed explicitly to what counts in it (the lockstep rules, env seeds), so models of different shapes can
live in one process (a whole model loaded by rank 0 alone next to a split one) and nothing depends on which model was
built first. The only module state is the cache of the communicators made so far, by size, since making one is
collective; the tensor-parallel layers find their group there by size, so that they copy and pickle.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sb3_parallel_dqn.distributed import comm
from sb3_parallel_dqn.distributed.comm import Group


class MeshError(ValueError):
    """A model-parallel size that does not fit the job."""


@dataclasses.dataclass(frozen=True)
class Mesh:
    """
    This rank's place in the mesh.

    :param model_parallel_size: ranks per replica (M)
    :param data_parallel_size: replicas (W / M)
    :param model_rank: which shard this rank holds (its rank in the model group)
    :param data_rank: which replica this rank belongs to (its rank in the data group)
    :param model_group: the ranks of this replica (None with M = 1)
    :param data_group: the ranks that hold the same shard (None means the world: M = 1)
    :param role: ``"replica"`` (the synchronous mode: every rank collects and learns), or in the asynchronous mode
        ``"learner"`` or ``"actor"``; the data group is then the ranks of this rank's role (see :func:`get_roles`)
    """

    model_parallel_size: int
    data_parallel_size: int
    model_rank: int
    data_rank: int
    model_group: Group | None
    data_group: Group | None
    role: str = "replica"

    @property
    def weights_group(self) -> Group | None:
        """The ranks that start from rank 0's weights (None: the world): the data group, or every rank in the
        asynchronous mode (the actors act with the learner's weights)."""
        return None if self.role != "replica" else self.data_group

    @property
    def seed_index(self) -> int:
        """This rank's index among the seeded streams (envs, sampling): its replica, or in the asynchronous mode the
        actors first (0 .. A-1), then the learners."""
        if self.role == "learner":
            return comm.world_size() - self.data_parallel_size + self.data_rank
        return self.data_rank

    @property
    def rollout_group(self) -> Group | None:
        """The ranks whose rollouts agree at their end (None: the world): the actors, in the asynchronous mode."""
        return self.data_group if self.role == "actor" else None

    def seed_of_the_job(self, seed: int | None) -> int | None:
        """
        ``seed``, or with model parallelism and no seed one drawn by rank 0 for the whole job (one ``Bcast``): the
        shards of a replica must be seeded alike (see :mod:`~sb3_parallel_dqn.engine.model_parallel`).
        """
        if seed is not None or self.model_parallel_size == 1:
            return seed
        return int(
            comm.broadcast_object(int(np.random.randint(2**31 - 1)), what="the job seed broadcast (ParallelDQN constructor)")
        )


_meshes: dict[int | str, Mesh] = {}  # made by get() by model-parallel size, and by get_roles()


def check_size(model_parallel_size: int, world_size: int) -> None:
    """Refuse a model-parallel size that does not divide the job, before any work."""
    if model_parallel_size < 1 or world_size % model_parallel_size != 0:
        raise MeshError(
            f"model_parallel_size={model_parallel_size} must be >= 1 and divide the number of MPI ranks ({world_size}): "
            f"the ranks form world_size / model_parallel_size replicas of model_parallel_size consecutive ranks"
        )


def get(model_parallel_size: int) -> Mesh:
    """
    The mesh of ``model_parallel_size`` ranks per replica. **Collective** the first time a size > 1 is asked for (two
    ``Split`` calls): call it on every rank at once. Size 1 needs no communication.
    """
    mesh = _meshes.get(model_parallel_size)
    if mesh is not None:  # the hot path: every forward pass of a split layer asks for its group
        return mesh
    world_size, rank = comm.world_size(), comm.rank()
    check_size(model_parallel_size, world_size)
    if model_parallel_size == 1:
        mesh = Mesh(1, world_size, 0, rank, None, None)
    else:
        model_group = comm.split(
            color=rank // model_parallel_size, key=rank, what="the mesh set-up (ParallelDQN constructor, load)"
        )
        data_group = comm.split(
            color=rank % model_parallel_size, key=rank, what="the mesh set-up (ParallelDQN constructor, load)"
        )
        assert model_group is not None and data_group is not None  # size > 1 means MPI is there (check_size)
        # Named alike on every rank: the watchdog tells groups with the same ranks apart by name.
        model_group.Set_name(f"model group (model_parallel_size={model_parallel_size})")
        data_group.Set_name(f"data group (model_parallel_size={model_parallel_size})")
        mesh = Mesh(
            model_parallel_size,
            world_size // model_parallel_size,
            rank % model_parallel_size,
            rank // model_parallel_size,
            model_group,
            data_group,
        )
    _meshes[model_parallel_size] = mesh
    return mesh


def get_roles(learner_ranks: int) -> Mesh:
    """
    The asynchronous mode's mesh: ranks ``0 .. learner_ranks - 1`` learn, the others act, and each role's ranks form
    its data group (the learners average gradients, the actors agree on their rollouts). **Collective** the first
    time (one ``Split``): call it on every rank at once.
    """
    key = f"roles:{learner_ranks}"
    mesh = _meshes.get(key)
    if mesh is not None:
        return mesh
    rank = comm.rank()
    role = "learner" if rank < learner_ranks else "actor"
    group = comm.split(color=int(role == "actor"), key=rank, what="the set-up of the learners and actors (ParallelDQN)")
    assert group is not None  # the asynchronous mode needs MPI (checked before)
    group.Set_name(f"{role}s (learner_ranks={learner_ranks})")
    mesh = _meshes[key] = Mesh(1, group.Get_size(), 0, group.Get_rank(), None, group, role)
    return mesh
