"""The sum-tree behind prioritized replay, against brute-force references."""

import math

import numpy as np
import pytest

from sb3_parallel_dqn.buffers.sum_tree import SumTree


def _chi_square_critical(degrees: int, z: float = 3.719) -> float:
    """Upper quantile of the chi-square distribution (Wilson-Hilferty); z = 3.719 is the normal's 1 - 1e-4 quantile."""
    return degrees * (1 - 2 / (9 * degrees) + z * math.sqrt(2 / (9 * degrees))) ** 3


@pytest.mark.parametrize("capacity", [1, 7, 16, 17, 300, 5000])
def test_parents_hold_the_sums_of_their_children(capacity):
    rng = np.random.default_rng(capacity)
    tree = SumTree(capacity)
    reference = np.zeros(capacity)
    for _ in range(20):
        indices = rng.integers(0, capacity, size=rng.integers(1, 40))
        values = rng.random(indices.size) * (rng.random(indices.size) < 0.8)  # some zeros
        tree.update(indices, values)
        reference[indices] = values  # numpy: the last of repeated indices wins, as in the tree
        index = int(rng.integers(0, capacity))
        tree.update(index, 0.25)  # the one-item path used per env step
        reference[index] = 0.25
    np.testing.assert_array_equal(tree.priorities, reference)
    assert tree.total == pytest.approx(reference.sum(), rel=1e-12)
    for children, parents in zip(tree._levels, tree._levels[1:], strict=False):
        np.testing.assert_allclose(parents[: children.size // 16], children.reshape(-1, 16).sum(axis=1), rtol=1e-12)


def test_find_matches_a_cumulative_sum_search():
    rng = np.random.default_rng(0)
    priorities = rng.random(1000) * (rng.random(1000) < 0.5)
    tree = SumTree(priorities.size)
    tree.update(np.arange(priorities.size), priorities)
    masses = rng.random(5000) * priorities.sum()
    expected = np.searchsorted(np.cumsum(priorities), masses, side="right")
    np.testing.assert_array_equal(tree.find(masses), expected)


def test_zero_priorities_are_never_found_even_past_the_total():
    tree = SumTree(10)
    tree.update(np.arange(10), [0, 1, 0, 2, 0, 0, 0, 3, 0, 0])
    found = tree.find(np.array([0, 0.999, 1, 2.999, 3, 5.999, 6, 6 + 1e-12, 100]))
    np.testing.assert_array_equal(found, [1, 1, 3, 3, 7, 7, 7, 7, 7])


def test_sampling_follows_the_priorities_chi_square():
    """Counts of 400k stratified draws over 50 items (some with priority 0) against their expected counts."""
    np.random.seed(0)
    rng = np.random.default_rng(1)
    priorities = rng.random(50) ** 2
    priorities[[3, 17, 40]] = 0.0
    tree = SumTree(64)  # 14 padding items that must never be drawn either
    tree.update(np.arange(50), priorities)
    draws = np.concatenate([tree.sample(256) for _ in range(1600)])
    counts = np.bincount(draws, minlength=64)
    assert counts[50:].sum() == 0 and counts[[3, 17, 40]].sum() == 0
    positive = priorities > 0
    expected = draws.size * priorities[positive] / priorities.sum()
    chi_square = (((counts[:50][positive] - expected) ** 2) / expected).sum()
    assert chi_square < _chi_square_critical(int(positive.sum()) - 1), chi_square
    # and a wrong distribution (uniform) is told apart by the same test
    uniform = np.full(positive.sum(), draws.size / positive.sum())
    assert (((counts[:50][positive] - uniform) ** 2) / uniform).sum() > _chi_square_critical(int(positive.sum()) - 1)


def test_sampling_uses_numpy_global_random_state():
    """SB3 seeds np.random (set_random_seed); the same seed must give the same batches."""
    tree = SumTree(100)
    tree.update(np.arange(100), np.linspace(0.1, 1, 100))
    np.random.seed(3)
    first = tree.sample(32)
    np.random.seed(3)
    np.testing.assert_array_equal(tree.sample(32), first)


def test_bad_input_is_refused():
    tree = SumTree(5)
    with pytest.raises(IndexError):
        tree.update(np.array([5]), [1.0])
    with pytest.raises(IndexError):
        tree.update(-1, 1.0)
    with pytest.raises(ValueError, match="finite"):
        tree.update(np.array([0, 1]), [1.0, np.nan])
    with pytest.raises(ValueError, match="finite"):
        tree.update(0, -1.0)
    with pytest.raises(ValueError, match="every priority is 0"):
        tree.sample(4)
    with pytest.raises(ValueError, match="capacity"):
        SumTree(0)
