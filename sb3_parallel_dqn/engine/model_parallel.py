"""
What ``ParallelDQN`` does with model parallelism (``model_parallel_size``) and a sharded optimizer
(``shard_optimizer``), kept out of the algorithm's class: split the policy over the model's mesh, cut whole tensors
(a model file's) to this rank's shards, put the whole model back together for saving, check that the shards stay in
sync, and say how many bytes this rank holds.

How the ranks of one replica stay identical (the issue's requirement 2): they are seeded alike (the seeds count
replicas, not ranks: :func:`~sb3_parallel_dqn.distributed.lockstep.env_seed`), so they step identical copies of the
envs, draw the same random numbers and, since every forward pass ends in an ``Allreduce`` whose result is the same on
every rank, choose the same actions and store the same transitions; :func:`check_identical_observations` checks it at
the start of every ``learn``. This costs each rank its own envs and replay buffer, but no communication per env step.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch as th

from sb3_parallel_dqn import compat
from sb3_parallel_dqn.buffers.memory import replay_buffer_nbytes
from sb3_parallel_dqn.distributed import comm, mesh
from sb3_parallel_dqn.distributed.gradients import check_synced
from sb3_parallel_dqn.distributed.lockstep import LockstepError
from sb3_parallel_dqn.distributed.tensor_parallel import (
    gathered_state_dict,
    shard_q_network,
    shard_rule,
    sharded_modules,
)

if TYPE_CHECKING:
    from stable_baselines3 import DQN
    from stable_baselines3.dqn.policies import DQNPolicy

    from sb3_parallel_dqn.engine.learner import Learner


def shard_policy(policy: DQNPolicy, grid: mesh.Mesh) -> None:
    """Split the online and the target Q-network over ``grid``; rebuild the optimizer over the shards."""
    if grid.model_parallel_size == 1:
        return
    for q_net in (policy.q_net, policy.q_net_target):
        shard_q_network(q_net, grid.model_rank, grid.model_parallel_size)
    lr = policy.optimizer.param_groups[0]["lr"]
    policy.optimizer = policy.optimizer_class(policy.q_net.parameters(), lr=lr, **policy.optimizer_kwargs)  # type: ignore[call-arg]


def _sharded_parameters(policy: DQNPolicy) -> dict[th.nn.Parameter, Any]:
    """The online network's split parameters, each with the function that cuts its shard from a whole tensor."""
    rules = shard_rule(policy.q_net)
    return {param: rules[name] for name, param in policy.q_net.named_parameters() if name in rules}


def cut_whole_optimizer_state(policy: DQNPolicy) -> None:
    """Cut whole Adam moments (loaded from a model file) to the shards this rank holds."""
    for param, cut in _sharded_parameters(policy).items():
        state = policy.optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state and state[key].shape != param.shape:
                state[key] = cut(state[key]).clone()


def norm_weights(policy: DQNPolicy, grid: mesh.Mesh) -> list[float]:
    """Per parameter of the online network: 1 for a shard, 1/M for a tensor that all M ranks of a model group hold."""
    sharded = _sharded_parameters(policy)
    size = grid.model_parallel_size
    return [1.0 if param in sharded else 1.0 / size for param in policy.q_net.parameters()]


def check_shards_synced(policy: DQNPolicy, n_updates: int, grid: mesh.Mesh) -> None:
    """:func:`~sb3_parallel_dqn.distributed.gradients.check_synced`, shard by shard (one small ``Allgather``)."""
    shards = frozenset(f"q_net.{name}" for name in shard_rule(policy.q_net)) | frozenset(
        f"q_net_target.{name}" for name in shard_rule(policy.q_net_target)
    )
    check_synced(policy, n_updates, shards, grid.model_rank)


def check_identical_observations(model: DQN, grid: mesh.Mesh) -> None:
    """
    Refuse, on every rank of the job, envs that differ within a model group: the shards of a replica must see the
    same observations (see the module docstring). One small ``Allgather``; nothing without model parallelism.
    """
    if grid.model_parallel_size == 1:
        return
    observation = compat.last_observation(model)
    arrays = observation.values() if isinstance(observation, dict) else [observation]
    checksum = 0
    for array in arrays:
        checksum = zlib.crc32(np.ascontiguousarray(array).tobytes(), checksum)
    table = comm.allgather(np.array([grid.data_rank, checksum], dtype=np.int64), what="the observation check of learn()")
    replicas = {int(replica): set(table[table[:, 0] == replica, 1].tolist()) for replica in table[:, 0]}
    if any(len(checksums) > 1 for checksums in replicas.values()):
        raise LockstepError(
            "the ranks of a model-parallel group reset to different observations: they must step identical envs. Build "
            "the envs with ParallelDQN(env_id, ...) or make_parallel_vec_env after the model set up its mesh, and pass a "
            "seed (env seeds count replicas, not ranks, so that the shards of a replica are seeded alike)"
        )


@contextlib.contextmanager
def whole_model(model: DQN, learner: Learner, grid: mesh.Mesh, shard_optimizer: bool) -> Iterator[None]:
    """
    Within the block, ``model.policy`` is the whole network with the whole optimizer state, as one process would hold
    it (for saving a file that any mesh, and stock SB3, can load). **Collective** when the model is split or its
    optimizer sharded (the shards are gathered over the model group, the moments over the data group); otherwise it
    does nothing.
    """
    if grid.model_parallel_size == 1 and not shard_optimizer:
        yield
        return
    # A file loaded since the last update holds whole moments: cut them to this rank's shard and block first, or
    # they would be gathered as if they were shards.
    learner.prepare_update()
    update = learner.update
    assert update is not None
    update.whole_state()  # a sharded optimizer's whole moments (of this rank's shards) in the optimizer's state
    policy = model.policy
    try:
        if grid.model_parallel_size > 1:
            whole = _gathered_policy(model, grid)
            model.policy = whole
            model._create_aliases()  # type: ignore[attr-defined]
        yield
    finally:
        model.policy = policy
        model._create_aliases()  # type: ignore[attr-defined]
        if shard_optimizer:
            policy.optimizer.state.clear()  # ShardedAdam keeps this rank's block


def _gathered_policy(model: DQN, grid: mesh.Mesh) -> DQNPolicy:
    policy = model.policy
    state = gathered_state_dict(policy, grid.model_group)
    whole: DQNPolicy = model.policy_class(  # type: ignore[assignment]
        model.observation_space, model.action_space, model.lr_schedule, **model.policy_kwargs
    )
    whole.load_state_dict(state)
    # Adam's moments, shard by shard: gathered and put together along the same dimension as the weights.
    sharded = _sharded_parameters(policy)
    moments = {
        index: {key: value.detach().cpu() for key, value in policy.optimizer.state[param].items()}
        for index, param in enumerate(policy.q_net.parameters())
        if param in sharded and param in policy.optimizer.state
    }
    by_rank = comm.allgather_object(
        moments, grid.model_group, what="the gathering of the split optimizer state (ParallelDQN.save)"
    )
    layers = {id(layer.weight): layer for _, layer in sharded_modules(policy.q_net)}
    optimizer_state = policy.optimizer.state_dict()
    # state_dict() shares each parameter's state dict with the optimizer: new ones, so that the shards stay shards
    optimizer_state["state"] = {index: dict(state) for index, state in optimizer_state["state"].items()}
    for index, param in enumerate(policy.q_net.parameters()):
        if index in moments:
            layer = layers.get(id(param))
            dim = layer.dim if layer is not None else 0  # a column-parallel layer's bias is split along dim 0
            for key in ("exp_avg", "exp_avg_sq"):
                optimizer_state["state"][index][key] = th.cat([shards[index][key] for shards in by_rank], dim=dim)
    whole.optimizer.load_state_dict(optimizer_state)
    return whole


def memory_report(model: DQN, learner: Learner) -> dict[str, int]:
    """Bytes held by this rank: parameters (online and target network), gradients, optimizer state, replay buffer."""
    if learner.update is None:
        learner.prepare_update()  # the flat buffers are made at the first train(): make them now
    update = learner.update
    assert update is not None
    parameters = sum(p.numel() * p.element_size() for p in model.policy.parameters())
    held = update.nbytes()
    return {
        "parameters": parameters,
        "gradients": held["gradients"],
        "optimizer": held["optimizer"],
        "replay_buffer": replay_buffer_nbytes(model.replay_buffer),
    }
