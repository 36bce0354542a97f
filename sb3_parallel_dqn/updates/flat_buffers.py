"""
Flat buffers for the updates: views of one contiguous tensor with the shapes of a network's parameters, and
``.grad`` tensors that are such views, so that autograd accumulates straight into one buffer (as DDP's
``gradient_as_bucket_view``) and zeroing, clipping, Adam and the ``Allreduce`` each touch one tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch as th


def flat_views(buffer: th.Tensor, like: Sequence[th.Tensor]) -> list[th.Tensor]:
    """Consecutive views of ``buffer`` with the shapes of ``like``."""
    views, offset = [], 0
    for tensor in like:
        views.append(buffer[offset : offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()
    return views


def attach_flat_grads(parameters: Sequence[th.Tensor], extra: int = 0) -> tuple[th.Tensor, list[th.Tensor]]:
    """
    Give every parameter a zero ``.grad`` that is a view of one new flat buffer (plus ``extra`` trailing slots, e.g.
    for a loss to reduce along). Autograd then accumulates straight into the buffer, as DDP's
    ``gradient_as_bucket_view`` does.
    """
    n = sum(p.numel() for p in parameters)
    buffer = th.zeros(n + extra, dtype=parameters[0].dtype, device=parameters[0].device)
    views = flat_views(buffer, parameters)
    for param, view in zip(parameters, views, strict=True):
        param.grad = view
    return buffer, views


def reattach_grads(parameters: Sequence[th.Tensor], views: Sequence[th.Tensor]) -> None:
    """
    Make each ``.grad`` its view again where something replaced it (``optimizer.zero_grad(set_to_none=True)`` sets
    ``None``; a user may assign a tensor): a replaced gradient is copied into its view, a missing one is zero.
    """
    for param, view in zip(parameters, views, strict=True):
        if param.grad is None:
            view.zero_()
            param.grad = view
        elif param.grad.data_ptr() != view.data_ptr():
            view.copy_(param.grad)
            param.grad = view
