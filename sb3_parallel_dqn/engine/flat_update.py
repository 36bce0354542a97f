"""
The gradient update of the online Q-network on flat buffers: gradients, and with Adam also the parameters and
Adam's moments, are views of one contiguous buffer each.

Small networks spend most of a gradient step in per-tensor overhead, not arithmetic: SB3's step zeroes, clips and
Adam-updates each parameter tensor separately (Adam alone runs about ten kernels per tensor). On flat buffers,
zeroing is one kernel, the clip scale one kernel, and Adam's update ten kernels for the whole network. Every one of
these operations is elementwise, so each element goes through the same float operations as in
``optimizer.step()``: the weights and Adam state stay bit-identical to SB3's (``tests/test_flat_update.py`` and
``tests/test_equivalence.py`` check it). The gradient norm is computed per tensor exactly as ``clip_grad_norm_``
does, because a norm over the flat buffer would sum in another order.

The optimizer object and its ``state_dict`` stay those of SB3 (one state entry per parameter), so saved models,
``load`` and ``set_parameters`` are unchanged; its state tensors are views of the flat buffers while training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch as th

from sb3_parallel_dqn import compat
from sb3_parallel_dqn.distributed.gradients import attach_flat_grads, flat_views, reattach_grads

# Adam settings the flat path supports; anything else (amsgrad, fused, capturable, ...) takes optimizer.step().
_FLAT_ADAM_OFF = ("amsgrad", "capturable", "differentiable", "fused")


def flat_adam_supported(optimizer: th.optim.Optimizer, parameters: Sequence[th.Tensor]) -> bool:
    """Whether :class:`FlatUpdate` can replace ``optimizer.step()`` bit for bit."""
    if type(optimizer) is not th.optim.Adam or len(optimizer.param_groups) != 1:
        return False
    group = optimizer.param_groups[0]
    same_params = len(group["params"]) == len(parameters) and all(
        a is b for a, b in zip(group["params"], parameters, strict=False)
    )
    if not same_params or any(group.get(key) for key in _FLAT_ADAM_OFF) or group.get("foreach"):
        return False
    if getattr(optimizer, "grad_scale", None) is not None or getattr(optimizer, "found_inf", None) is not None:
        return False
    first = parameters[0]
    return all(p.dtype == th.float32 and p.device == first.device and not p.is_sparse for p in parameters)


class FlatUpdate:
    """
    Zero, clip and step the gradients of ``parameters`` (all of one network, each requiring grad) on flat buffers.

    With SB3's default ``Adam`` the parameters and Adam's ``exp_avg``/``exp_avg_sq`` also become views of flat
    buffers and :meth:`step` runs torch's own single-tensor Adam once on the whole network; with any other optimizer
    :meth:`step` calls ``optimizer.step()``. Call :meth:`attach` before a series of updates: it is cheap when nothing
    changed, and re-flattens after anything replaced a tensor (``load_state_dict``, ``zero_grad(set_to_none=True)``).
    Call :meth:`detach_steps` after the series, which writes the step count back to every parameter's state.

    :param parameters: the parameters to update, in the optimizer's order
    :param optimizer: the optimizer that owns them
    :param grad_buffer: an existing flat gradient buffer to use (whose leading elements the ``.grad`` views cover),
        e.g. :class:`~sb3_parallel_dqn.distributed.gradients.GradientAverager`'s; by default one is made here
    :param total_norm: the clip norm from the per-tensor norms (default: their 2-norm, as ``clip_grad_norm_``); with
        model parallelism, the whole model's (see :func:`sb3_parallel_dqn.distributed.model_parallel.whole_model_norm`)
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

    def clip_grad_norm_(self, max_norm: float) -> th.Tensor:
        """
        ``th.nn.utils.clip_grad_norm_(parameters, max_norm)``, same float operations: the norm of the per-tensor
        norms, then one multiply of the flat buffer by the clamped coefficient. Returns the total norm.
        """
        norms = th.stack(compat.foreach_norm(self.grads, 2.0))
        total_norm = th.linalg.vector_norm(norms, 2.0) if self.total_norm is None else self.total_norm(norms)
        clip_coef = float(max_norm) / (total_norm + 1e-6)
        self._flat_grad.mul_(th.clamp(clip_coef, max=1.0))
        return total_norm

    def step(self) -> None:
        """One optimizer step: torch's single-tensor Adam on the flat buffers, or ``optimizer.step()``."""
        if not self.flat_adam:
            self.optimizer.step()
            return
        compat.adam_step(
            self.optimizer.param_groups[0],
            self.param_buffer,
            self._flat_grad,
            self.exp_avg_buffer,
            self.exp_avg_sq_buffer,
            self.step_count,
        )

    def detach_steps(self) -> None:
        """Write the flat step count into every parameter's Adam state (as ``optimizer.step()`` would have)."""
        if self.flat_adam:
            for param in self.parameters:
                self.optimizer.state[param]["step"].copy_(self.step_count)
