"""
:class:`Learner`: the learning role of ``ParallelDQN`` -- sampling, targets, the TD loss, the update and the sync --
on the speed paths.

Each path makes the same float operations, and the same random draws, as the SB3 code it stands for, so that one
process stays bit-identical to SB3's ``DQN`` (``tests/test_equivalence.py``):

- sampling: all the uniform batches of a ``train()`` call drawn and gathered at once
  (:func:`~sb3_parallel_dqn.engine.sampling.sample_batches`); a prioritized buffer is sampled step by step instead,
  since each step's new priorities weigh the next draw, with the importance weights normalised over all ranks;
- the TD loss: SB3's forwards of the online and the target network, autograd's backward into the flat gradient
  buffer;
- the update: one :class:`~sb3_parallel_dqn.updates.Update` that :func:`~sb3_parallel_dqn.updates.make_update`
  picks from the model's mesh and settings (flat buffers under a stock ``Adam``, data-parallel averaging with one
  ``Allreduce``, the sharded optimizer, the model-group norm of a split model, or SB3's own eager path).

The model's ``train()`` reads as SB3's ``DQN.train()``: :meth:`Learner.updates` around the gradient steps, each of
them :meth:`~Learner.sample`, :meth:`~Learner.gradients`, :meth:`~Learner.clip_grad_norm_` and :meth:`~Learner.step`.
The collecting side is :class:`~sb3_parallel_dqn.engine.collector.Collector`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch as th
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from sb3_parallel_dqn import compat
from sb3_parallel_dqn.buffers.prioritized import PrioritizedReplayBuffer
from sb3_parallel_dqn.distributed import comm
from sb3_parallel_dqn.distributed.mesh import Mesh
from sb3_parallel_dqn.engine import model_parallel
from sb3_parallel_dqn.engine.sampling import sample_batches
from sb3_parallel_dqn.losses import check_finite, td_loss
from sb3_parallel_dqn.updates import Update, make_update

if TYPE_CHECKING:
    from stable_baselines3 import DQN

#: The parts of a gradient step that :class:`PartTimer` times.
STEP_PARTS = ("sample", "forward_backward", "sync", "optimizer")


class PartTimer:
    """Seconds spent in each part of the gradient steps (``scripts/benchmark.py``'s profile); off by default."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STEP_PARTS, 0.0)
        self._last = time.perf_counter()

    def mark(self, part: str) -> None:
        """The time since the last mark was spent in ``part`` (``"start"`` begins a series)."""
        now = time.perf_counter()
        if part in self.seconds:
            self.seconds[part] += now - self._last
        self._last = now


class Learner:
    """
    The learning role of one ``ParallelDQN`` model (see the module docstring). Per ``train()``: :meth:`updates`
    around the gradient steps, each of them :meth:`sample`, :meth:`gradients`, :meth:`clip_grad_norm_` and
    :meth:`step`. It rebuilds its flat buffers whenever ``load`` or ``set_parameters`` replaced the network or the
    optimizer.

    :param model: the model
    :param grid: the model's mesh
    """

    def __init__(self, model: DQN, grid: Mesh) -> None:
        self.model, self.grid = model, grid
        self.update: Update | None = None  # made at the first train() (or memory_report, save), see prepare_update
        self.timer: PartTimer | None = None
        self._batches: Iterator[ReplayBufferSamples] | None = None
        self._sampled_leaves: np.ndarray | None = None
        self.updates_made = 0  # the model's gradient steps, counting those of the current train() call

    @contextlib.contextmanager
    def updates(self, gradient_steps: int, batch_size: int) -> Iterator[Learner]:
        """Around the gradient steps of one ``train()`` call: forwards, flat buffers and batches before them, the
        flat buffers let go after them (also when one raised)."""
        self.start_updates(gradient_steps, batch_size)
        try:
            yield self
        finally:
            self.end_updates()

    # --- gradient steps -------------------------------------------------------------------------------------------

    def start_updates(self, gradient_steps: int, batch_size: int) -> None:
        """Before the gradient steps of one ``train()`` call: forwards, flat buffers, and the batches."""
        model = self.model
        self.prepare_update()
        self.updates_made = compat.n_updates(model)
        buffer = model.replay_buffer
        if isinstance(buffer, PrioritizedReplayBuffer):
            buffer.set_progress(compat.progress_remaining(model))
            self._batches = None
        else:
            assert buffer is not None
            self._batches = sample_batches(buffer, gradient_steps, batch_size, model._vec_normalize_env)
        self._mark("start")

    def sample(self, batch_size: int) -> tuple[ReplayBufferSamples, th.Tensor | None]:
        """The next batch, with its importance weights (a column) when the buffer is prioritized."""
        if self._batches is not None:
            batch = next(self._batches)
            self._mark("sample")
            return batch, None
        buffer = self.model.replay_buffer
        assert isinstance(buffer, PrioritizedReplayBuffer)
        batch, weights, self._sampled_leaves = buffer.sample_prioritized(batch_size, env=self.model._vec_normalize_env)
        # Divide by the largest weight of this step over all ranks: every rank's samples then count on one scale in
        # the averaged gradient, and weights only ever scale updates down (Schaul et al. 2016, section 3.4).
        what = "the prioritized-replay weight Allreduce of train()"
        max_weight = comm.allreduce_max_(np.array([weights.max()]), group=self.grid.data_group, what=what)[0]
        weights_column = th.as_tensor(weights / max_weight, dtype=th.float32, device=self.model.device).reshape(-1, 1)
        self._mark("sample")
        return batch, weights_column

    def gradients(
        self, replay_data: ReplayBufferSamples, gamma: float, double_q: bool, weights: th.Tensor | None
    ) -> tuple[float, th.Tensor | None]:
        """
        The TD loss of ``replay_data`` (:func:`~sb3_parallel_dqn.losses.td_loss`, same parameters) and its gradients,
        averaged over ranks (before clipping, so that every rank clips and steps alike). Returns the loss, averaged
        over ranks, and with ``weights`` this rank's TD errors.
        """
        assert self.update is not None
        loss, td_errors = td_loss(self.model.q_net, self.model.q_net_target, replay_data, gamma, double_q, weights)
        self.update.zero_grad()
        loss.backward()
        self._mark("forward_backward")
        return self._average(loss), td_errors

    def _average(self, loss: th.Tensor) -> float:
        """Average the gradients and ``loss`` over ranks (the update's sync); return the loss."""
        assert self.update is not None
        loss_value = self.update.sync(loss)
        self._mark("sync")
        return loss_value

    def clip_grad_norm_(self, max_norm: float) -> th.Tensor:
        """``clip_grad_norm_`` of the online network, on the flat gradient buffer; returns the total norm."""
        assert self.update is not None
        return self.update.clip_grad_norm_(max_norm)

    def step(self, loss: float, grad_norm: th.Tensor, td_errors: th.Tensor | None) -> None:
        """
        The optimizer step, once the loss and the (clipped, averaged) gradients' norm are checked finite (a
        :class:`~sb3_parallel_dqn.losses.NonFiniteError` on every rank otherwise: they all hold the same averages);
        with prioritized replay, the sampled transitions' new priorities too; every ``sync_check_interval`` updates,
        a check that the ranks still hold the same weights.
        """
        assert self.update is not None
        model = self.model
        self.updates_made += 1
        check_finite(loss, grad_norm, self.updates_made, model.num_timesteps)
        self.update.step()
        if self._sampled_leaves is not None and td_errors is not None:
            buffer = model.replay_buffer
            assert isinstance(buffer, PrioritizedReplayBuffer)
            buffer.update_priorities(self._sampled_leaves, td_errors.cpu().numpy())
            self._sampled_leaves = None
        self._mark("optimizer")
        interval = getattr(model, "sync_check_interval", 0)
        replicated = self.grid.data_parallel_size * self.grid.model_parallel_size > 1  # the world, or the learners
        if replicated and interval > 0 and self.updates_made % interval == 0:
            model_parallel.check_shards_synced(model.policy, self.updates_made, self.grid)

    def end_updates(self) -> None:
        """After the gradient steps of one ``train()`` call (also when one raised)."""
        self._batches = None
        if self.update is not None:
            self.update.end_updates()

    def pop_mean_sync_ms(self) -> float | None:
        """Mean milliseconds of one gradient ``Allreduce`` since the last call; None with one process."""
        return None if self.update is None else self.update.pop_mean_sync_ms()

    def prepare_update(self) -> None:
        """
        (Re)build the flat buffers where ``load``/``set_parameters`` replaced the network or the optimizer, and cut
        whole Adam moments loaded since the last update to this rank's shard (and block). Local: no collective.
        """
        model = self.model
        update, grid = self.update, self.grid
        if grid.model_parallel_size > 1:
            model_parallel.cut_whole_optimizer_state(model.policy)  # whole moments from a model file, into shards
        parameters = [p for p in model.q_net.parameters() if p.requires_grad]
        if (
            update is None
            or update.optimizer is not model.policy.optimizer
            or update.grad_buffer.device != parameters[0].device  # the policy was moved to another device
            or len(update.parameters) != len(parameters)
            or any(a is not b for a, b in zip(update.parameters, parameters, strict=True))
        ):
            weights = model_parallel.norm_weights(model.policy, grid) if grid.model_parallel_size > 1 else None
            shard_optimizer = getattr(model, "shard_optimizer", False)
            self.update = make_update(parameters, model.policy.optimizer, grid, shard_optimizer, weights)
        else:
            update.attach()

    def _mark(self, part: str) -> None:
        if self.timer is not None:
            self.timer.mark(part)
