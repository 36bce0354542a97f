"""
The gradient update of the online Q-network on flat buffers: gradients, and with Adam also the parameters and
Adam's moments, are views of one contiguous buffer each.

Small networks spend most of a gradient step in per-tensor overhead, not arithmetic: SB3's step zeroes, clips and
Adam-updates each parameter tensor separately (Adam alone runs about ten kernels per tensor). On flat buffers,
zeroing is one kernel, the clip scale one kernel, and Adam's update ten kernels for the whole network: a stock
``torch.optim.Adam`` over one flat tensor (:class:`FlatAdam`), with the hyperparameters of SB3's optimizer. Every one
of these operations is elementwise, so each element goes through the same float operations as in
``optimizer.step()``: the weights and Adam state stay bit-identical to SB3's (``tests/test_flat_update.py`` and
``tests/test_equivalence.py`` check it). The gradient norm is ``torch.nn.utils.get_total_norm`` over the per-parameter
views of the flat gradient buffer, as ``clip_grad_norm_`` computes it (a norm over the flat buffer would sum in
another order), and the clip ``torch.nn.utils.clip_grads_with_norm_`` of the flat buffer. Only public torch APIs.

The optimizer object and its ``state_dict`` stay those of SB3 (one state entry per parameter), so saved models,
``load`` and ``set_parameters`` are unchanged; its state tensors are views of the flat buffers while training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch as th
from torch.nn.utils import clip_grads_with_norm_, get_total_norm

from sb3_parallel_dqn.updates.base import Update
from sb3_parallel_dqn.updates.flat_buffers import attach_flat_grads, flat_views, reattach_grads

# Adam settings the flat path supports; anything else takes optimizer.step(). fused: torch's fused CPU kernel rounds
# some elements differently on one flat tensor than on the separate tensors (its vector/scalar split follows the
# tensor boundaries; tests/test_flat_update.py); amsgrad: a third moment the flat state does not carry.
_FLAT_ADAM_OFF = ("amsgrad", "capturable", "differentiable", "fused")
# The hyperparameters of SB3's optimizer that FlatAdam reads before every step (SB3's schedule sets "lr").
_HYPERPARAMETERS = ("lr", "betas", "eps", "weight_decay", "maximize", "decoupled_weight_decay")


def flat_adam_supported(optimizer: th.optim.Optimizer, parameters: Sequence[th.Tensor]) -> bool:
    """Whether :class:`FlatUpdate` can replace ``optimizer.step()`` bit for bit."""
    if type(optimizer) is not th.optim.Adam or len(optimizer.param_groups) != 1:
        return False
    group = optimizer.param_groups[0]
    same_params = len(group["params"]) == len(parameters) and all(
        a is b for a, b in zip(group["params"], parameters, strict=False)
    )
    if not same_params or any(group.get(key) for key in _FLAT_ADAM_OFF):
        return False
    if getattr(optimizer, "grad_scale", None) is not None or getattr(optimizer, "found_inf", None) is not None:
        return False
    first = parameters[0]
    return all(p.dtype == th.float32 and p.device == first.device and not p.is_sparse for p in parameters)


class FlatAdam:
    """
    A stock ``torch.optim.Adam`` over one flat tensor ``param`` (whose ``.grad`` becomes ``grad``), its state the flat
    moment buffers and step count given here, its hyperparameters those of ``optimizer`` (SB3's ``Adam``, checked by
    :func:`flat_adam_supported`), read again before every :meth:`step`. Adam is elementwise, so one step of it is
    ``optimizer.step()`` over the tensors that ``param`` is the concatenation of, bit for bit; with ``foreach``
    unset, the same implementation is chosen as for them (the single-tensor one on CPU, as torch documents).
    """

    def __init__(
        self,
        optimizer: th.optim.Optimizer,
        param: th.Tensor,
        grad: th.Tensor,
        exp_avg: th.Tensor,
        exp_avg_sq: th.Tensor,
        step: th.Tensor,
    ) -> None:
        self.source = optimizer.param_groups[0]
        param.grad = grad
        settings = {key: self.source[key] for key in optimizer.defaults if key in self.source}
        if settings.get("foreach") is None and param.device.type == "cpu":
            settings["foreach"] = False  # what Adam resolves None to on CPU, decided once instead of at every step
        self.optimizer = th.optim.Adam([param], **settings)
        self.optimizer.state[param] = {"step": step, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
        self.group = self.optimizer.param_groups[0]
        self._keys = [key for key in _HYPERPARAMETERS if key in self.source and key in self.group]

    def step(self) -> None:
        """``Adam.step()`` on the flat tensor, with the current hyperparameters of SB3's optimizer."""
        group, source = self.group, self.source
        for key in self._keys:
            group[key] = source[key]
        self.optimizer.step()


class FlatUpdate(Update):
    """
    Zero, clip and step the gradients of ``parameters`` (all of one network, each requiring grad) on flat buffers.

    With SB3's default ``Adam`` the parameters and Adam's ``exp_avg``/``exp_avg_sq`` also become views of flat
    buffers and :meth:`step` runs a stock ``Adam`` once on the whole network (:class:`FlatAdam`); with any other
    optimizer :meth:`step` calls ``optimizer.step()``. Call :meth:`attach` before a series of updates: it is cheap when nothing
    changed, and re-flattens after anything replaced a tensor (``load_state_dict``, ``zero_grad(set_to_none=True)``).
    Call :meth:`end_updates` after the series, which writes the step count back to every parameter's state. One
    process: :meth:`sync` only reads the loss (:class:`~sb3_parallel_dqn.updates.averaged.AveragedUpdate` averages).

    :param parameters: the parameters to update, in the optimizer's order
    :param optimizer: the optimizer that owns them
    :param grad_buffer: an existing flat gradient buffer to use (whose leading elements the ``.grad`` views cover),
        e.g. :class:`~sb3_parallel_dqn.updates.averaged.GradientAverager`'s; by default one is made here
    :param total_norm: the clip norm from the per-tensor norms (default: their 2-norm, as ``clip_grad_norm_``); with
        model parallelism, the whole model's (:class:`~sb3_parallel_dqn.updates.split.ModelGroupNorm`)
    """

    def __init__(
        self,
        parameters: Sequence[th.nn.Parameter],
        optimizer: th.optim.Optimizer,
        grad_buffer: th.Tensor | None = None,
        total_norm: Callable[[th.Tensor], th.Tensor] | None = None,
    ) -> None:
        self.parameters = list(parameters)
        if not self.parameters or not all(p.requires_grad for p in self.parameters):
            raise ValueError("FlatUpdate needs a non-empty list of parameters that all require grad")
        self.optimizer = optimizer
        self.total_norm = total_norm
        n = sum(p.numel() for p in self.parameters)
        if grad_buffer is None:
            grad_buffer, _ = attach_flat_grads(self.parameters)
        self.grad_buffer = grad_buffer
        self.grads = flat_views(grad_buffer, self.parameters)
        self._flat_grad = grad_buffer[:n]
        self.flat_adam = flat_adam_supported(optimizer, self.parameters)
        if self.flat_adam:
            device = self.parameters[0].device
            self.param_buffer = th.empty(n, dtype=th.float32, device=device)
            self.exp_avg_buffer = th.zeros(n, dtype=th.float32, device=device)
            self.exp_avg_sq_buffer = th.zeros(n, dtype=th.float32, device=device)
            self._param_views = flat_views(self.param_buffer, self.parameters)
            self._exp_avg_views = flat_views(self.exp_avg_buffer, self.parameters)
            self._exp_avg_sq_views = flat_views(self.exp_avg_sq_buffer, self.parameters)
            self.step_count = th.tensor(0.0)
            self.flat_optimizer = FlatAdam(
                optimizer, self.param_buffer, self._flat_grad, self.exp_avg_buffer, self.exp_avg_sq_buffer, self.step_count
            )
        # What clip_grads_with_norm_ scales: the flat gradient buffer at once (the flat parameter's .grad), or the views.
        self._clipped: list[th.Tensor] = [self.param_buffer] if self.flat_adam else list(self.parameters)
        self.attach()

    def attach(self) -> None:
        """Make gradients, parameters and Adam state views of the flat buffers again where something replaced them."""
        reattach_grads(self.parameters, self.grads)
        if not self.flat_adam:
            return
        for param, view in zip(self.parameters, self._param_views, strict=True):
            if param.data_ptr() != view.data_ptr():
                with th.no_grad():
                    view.copy_(param)
                param.data = view
        states = [self.optimizer.state[p] for p in self.parameters]
        if not any(states):  # before the first step: create Adam's state as its _init_group would, but flat
            self.exp_avg_buffer.zero_()
            self.exp_avg_sq_buffer.zero_()
            self.step_count.fill_(0.0)
            for param, exp_avg, exp_avg_sq in zip(self.parameters, self._exp_avg_views, self._exp_avg_sq_views, strict=True):
                self.optimizer.state[param] = {"step": th.tensor(0.0), "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
            return
        steps = {float(state["step"]) for state in states}
        if len(steps) != 1 or any(len(state) != 3 for state in states):
            # Parameters stepped different numbers of times (or a foreign state layout): not one flat update.
            self.flat_adam = False
            return
        self.step_count.fill_(steps.pop())
        for state, exp_avg, exp_avg_sq in zip(states, self._exp_avg_views, self._exp_avg_sq_views, strict=True):
            for key, view in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
                if state[key].data_ptr() != view.data_ptr():
                    view.copy_(state[key])
                    state[key] = view

    def zero_grad(self) -> None:
        """Zero every gradient with one kernel."""
        self._flat_grad.zero_()

    def sync(self, loss: th.Tensor) -> float:
        """One process: nothing to average."""
        return loss.item()

    def clip_grad_norm_(self, max_norm: float) -> th.Tensor:
        """
        ``th.nn.utils.clip_grad_norm_(parameters, max_norm)``, same float operations: ``get_total_norm`` of the
        per-parameter gradient views (the norm of the per-tensor norms), then ``clip_grads_with_norm_``, one multiply
        of the flat buffer by the clamped coefficient. Returns the total norm.
        """
        if self.total_norm is None:
            total_norm = get_total_norm(self.grads, 2.0)
        else:  # the whole model's norm from this rank's per-tensor norms (model parallelism)
            total_norm = self.total_norm(th.stack([th.linalg.vector_norm(grad, 2.0) for grad in self.grads]))
        clip_grads_with_norm_(self._clipped, max_norm, total_norm)
        return total_norm

    def step(self) -> None:
        """One optimizer step: a stock ``Adam`` on the flat buffers (:class:`FlatAdam`), or ``optimizer.step()``."""
        if self.flat_adam:
            self.flat_optimizer.step()
        else:
            self.optimizer.step()

    def end_updates(self) -> None:
        """Write the flat step count into every parameter's Adam state (as ``optimizer.step()`` would have)."""
        if self.flat_adam:
            for param in self.parameters:
                self.optimizer.state[param]["step"].copy_(self.step_count)

    def nbytes(self) -> dict[str, int]:
        if self.flat_adam:
            optimizer = self.exp_avg_buffer.nbytes + self.exp_avg_sq_buffer.nbytes
        else:
            optimizer = sum(t.nbytes for s in self.optimizer.state.values() for t in s.values() if th.is_tensor(t))
        return {"gradients": self.grad_buffer.nbytes, "optimizer": optimizer}
