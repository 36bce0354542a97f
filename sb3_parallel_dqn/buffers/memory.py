"""
How many bytes a replay buffer holds: one rule for :meth:`ParallelDQN.memory_report` and the replay benchmark.

A buffer's bytes are those of its arrays, found by walking its attributes: numpy arrays and tensors, the sum trees of
prioritized replay, and :class:`~sb3_parallel_dqn.FrameReplayBuffer`'s frame stores. Its stacked views count 0:
they rebuild stacks on demand and hold no copy.
"""

from __future__ import annotations

from typing import Any


def replay_buffer_nbytes(buffer: Any) -> int:
    """Bytes of every array ``buffer`` holds (0 for ``None``)."""
    return 0 if buffer is None else sum(_nbytes(value) for value in vars(buffer).values())


def _nbytes(value: Any) -> int:
    if isinstance(getattr(value, "nbytes", None), int):
        return int(value.nbytes)  # arrays, tensors, frame stores and stacked views
    if isinstance(value, dict):
        return sum(_nbytes(item) for item in value.values())
    if isinstance(value, list | tuple):
        return sum(_nbytes(item) for item in value)
    # A sum tree: its levels are arrays (other objects, such as spaces or devices, hold no replay data)
    return sum(_nbytes(item) for item in vars(value).values()) if hasattr(value, "_levels") else 0
