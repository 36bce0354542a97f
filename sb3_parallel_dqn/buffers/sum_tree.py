"""
A sum-tree over a fixed number of non-negative priorities, with batched numpy updates and draws.

The tree is 16-ary: level 0 holds the priorities, each node of level ``j + 1`` the sum of 16 consecutive nodes of
level ``j``, and the last level is the root. A batch of updates or draws runs a few vectorised numpy operations per
level, and there are ``ceil(log16(capacity))`` levels (5 for 100k items), so a batch costs a few dozen numpy calls
whatever its size, with no Python loop over items. A binary tree would loop 17-20 levels deep in Python, and at
replay batch sizes numpy's per-call overhead, not arithmetic, dominates. Parents are
recomputed from their children instead of adding deltas, so rounding errors never accumulate.
"""

from __future__ import annotations

import math

import numpy as np

# Children per node.
_ARITY = 16
# x @ _UPPER_TRIANGLE holds the running sums of the rows of x.
_UPPER_TRIANGLE = np.triu(np.ones((_ARITY, _ARITY)))


class SumTree:
    """
    Priorities of ``capacity`` items; draws item ``k`` with probability ``priority[k] / total``.

    :param capacity: number of items
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, not {capacity}")
        self.capacity = capacity
        # levels[0] are the priorities, levels[-1] the root; each level but the root is padded with zeros to a
        # whole number of 16-node groups, one group per node of the level above.
        self._levels: list[np.ndarray] = []
        size = capacity
        while True:
            groups = -(-size // _ARITY)
            self._levels.append(np.zeros(groups * _ARITY, dtype=np.float64))
            size = groups
            if size == 1:
                break
        self._levels.append(np.zeros(1, dtype=np.float64))

    @property
    def total(self) -> float:
        """The sum of all priorities."""
        return float(self._levels[-1][0])

    @property
    def priorities(self) -> np.ndarray:
        """Every item's priority (a read-only view)."""
        view = self._levels[0][: self.capacity]
        view.flags.writeable = False
        return view

    def update(self, indices: np.ndarray | int, priorities: np.ndarray | float) -> None:
        """
        Set the priorities of items ``indices`` (where an index repeats, its last priority wins, as with a numpy
        assignment).
        """
        if np.ndim(indices) == 0 and np.ndim(priorities) == 0:
            self._update_one(int(indices), float(priorities))  # type: ignore[arg-type]
            return
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size == 0:
            return
        if indices.min() < 0 or indices.max() >= self.capacity:
            raise IndexError(f"item indices must lie in [0, {self.capacity}), got {indices.min()}..{indices.max()}")
        values = np.broadcast_to(np.asarray(priorities, dtype=np.float64), indices.shape)
        if not (np.isfinite(values).all() and (values >= 0).all()):
            raise ValueError("priorities must be finite and >= 0")
        self._levels[0][indices] = values
        for children, parents in zip(self._levels, self._levels[1:], strict=False):
            # One level up at a time, each touched parent recomputed from its 16 children, which are final by then.
            # A parent shared by several items is computed several times, to the same value.
            indices = indices // _ARITY
            parents[indices] = children.reshape(-1, _ARITY)[indices].sum(axis=1)

    def _update_one(self, index: int, priority: float) -> None:
        # One item per env step while collecting: slices and Python scalars, a few microseconds per level.
        if not 0 <= index < self.capacity:
            raise IndexError(f"item index must lie in [0, {self.capacity}), got {index}")
        if not (math.isfinite(priority) and priority >= 0):
            raise ValueError("priorities must be finite and >= 0")
        self._levels[0][index] = priority
        for children, parents in zip(self._levels, self._levels[1:], strict=False):
            index //= _ARITY
            parents[index] = children[index * _ARITY : (index + 1) * _ARITY].sum()

    def find(self, masses: np.ndarray) -> np.ndarray:
        """
        The item at each cumulative mass: the first ``k`` with ``priority[0] + ... + priority[k] > mass``, for masses
        in ``[0, total)``. Items with priority 0 are never returned, even where rounding puts a mass past the total.
        """
        remaining = np.asarray(masses, dtype=np.float64).reshape(-1).copy()
        node = np.zeros(remaining.shape, dtype=np.int64)
        rows = np.arange(remaining.size)
        for level in reversed(self._levels[:-1]):
            children = level.reshape(-1, _ARITY)[node]
            # Running sums over each node's children, as one small matrix product: numpy's cumsum along a short
            # axis was several times slower.
            cumulative = children @ _UPPER_TRIANGLE
            # The first non-empty child whose running sum exceeds the remaining mass; past the node's total (which
            # only rounding allows), its last non-empty child.
            candidates = (cumulative > remaining[:, None]) & (children > 0)
            child = candidates.argmax(axis=1)
            overshoot = ~candidates[rows, child]
            if overshoot.any():
                child[overshoot] = _ARITY - 1 - np.argmax(children[overshoot, ::-1] > 0, axis=1)
            remaining -= cumulative[rows, child] - children[rows, child]
            node = node * _ARITY + child
        return node

    def sample(self, batch_size: int) -> np.ndarray:
        """
        Draw ``batch_size`` items in proportion to their priorities, stratified as in Schaul et al. (2016): the
        total mass is cut into ``batch_size`` equal segments and one mass is drawn uniformly in each (from
        ``np.random``, which SB3 seeds), which keeps each item's expected count exact while spreading a batch over
        the whole distribution.
        """
        total = self.total
        if not total > 0:
            raise ValueError("cannot sample: every priority is 0")
        masses = (np.arange(batch_size) + np.random.random_sample(batch_size)) * (total / batch_size)
        return self.find(masses)
