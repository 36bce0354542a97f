"""
:class:`SampleToInsertRatio`: the replay ratio of the asynchronous mode, held whatever the speed of either side.

Reverb's rate limiter of the same name (Cassirer et al. 2021, https://arxiv.org/abs/2102.04736), in transitions:
after ``min_size`` inserts, the learner may sample while ``inserts * samples_per_insert - samples`` stays above the
lower edge of a band around ``min_size * samples_per_insert``, and actors may insert while it stays below the upper
edge. A learner that runs ahead waits for transitions; actors that run ahead wait for the learner. The band
(``error_buffer`` samples wide on each side) lets both run without waiting for every single message.
"""

from __future__ import annotations

import math


class SampleToInsertRatio:
    """
    The sample-to-insert ratio limiter (see the module docstring).

    :param samples_per_insert: transitions sampled per transition inserted (the replay ratio)
    :param min_size: transitions inserted before the first sample (``learning_starts``)
    :param error_buffer: how far, in samples, the two sides may run ahead of the exact ratio; at least one batch
    :param sample_ahead: how far the learner may run ahead, if less (None: ``error_buffer``, Reverb's symmetric
        band). A narrow lead with a wide band for the actors holds the measured ratio close to the exact one while
        the actors still post without waiting for each grant
    """

    def __init__(
        self, samples_per_insert: float, min_size: int, error_buffer: float, sample_ahead: float | None = None
    ) -> None:
        if not samples_per_insert > 0:
            raise ValueError(f"samples_per_insert must be > 0, not {samples_per_insert}")
        if min_size < 0 or not error_buffer > 0:
            raise ValueError(f"min_size must be >= 0 and error_buffer > 0, not {min_size}, {error_buffer}")
        self.samples_per_insert, self.min_size, self.error_buffer = samples_per_insert, min_size, error_buffer
        offset = samples_per_insert * min_size
        self.min_diff, self.max_diff = offset - (error_buffer if sample_ahead is None else sample_ahead), offset + error_buffer
        self.inserts, self.samples = 0, 0

    def _diff(self) -> float:
        return self.inserts * self.samples_per_insert - self.samples

    def can_sample(self, n: int) -> bool:
        """Whether the learner may sample ``n`` transitions now (one batch)."""
        return self.inserts >= self.min_size and self._diff() - n >= self.min_diff

    def on_track(self, n: int) -> bool:
        """Whether sampling ``n`` more keeps the ratio at or below the exact one (the end of training drains to it)."""
        return self.inserts > self.min_size and self.samples + n <= self.samples_per_insert * (self.inserts - self.min_size)

    def insert_allowance(self) -> int:
        """How many transitions may have been inserted in all, now: actors stop at this count until samples follow."""
        return max(self.inserts, math.floor((self.max_diff + self.samples) / self.samples_per_insert))

    def inserted(self, n: int) -> None:
        """``n`` transitions went into replay."""
        self.inserts += n

    def sampled(self, n: int) -> None:
        """``n`` transitions were sampled (one batch)."""
        self.samples += n

    def ratio(self) -> float | None:
        """The measured samples per insert since learning started (None before)."""
        counted = self.inserts - self.min_size
        return self.samples / counted if counted > 0 else None
