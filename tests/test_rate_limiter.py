"""The asynchronous mode's rate limiter (issue 25): Reverb's ``SampleToInsertRatio`` semantics, in transitions."""

import numpy as np
import pytest

from sb3_parallel_dqn.engine.rate_limiter import SampleToInsertRatio


def test_no_sample_before_min_size_and_inserts_capped_by_the_band():
    limiter = SampleToInsertRatio(samples_per_insert=4.0, min_size=100, error_buffer=64)
    assert not limiter.can_sample(1)
    # before any sample, actors may insert min_size plus the band's worth (64 samples / 4 per insert = 16)
    assert limiter.insert_allowance() == 116
    limiter.inserted(99)
    assert not limiter.can_sample(1)
    limiter.inserted(1)
    assert limiter.can_sample(32) and not limiter.can_sample(65)  # 64 samples ahead of the exact ratio at most
    assert limiter.ratio() is None


def test_the_learner_lead_can_be_narrower_than_the_actors():
    limiter = SampleToInsertRatio(samples_per_insert=2.0, min_size=10, error_buffer=100, sample_ahead=8)
    limiter.inserted(10)
    assert limiter.can_sample(8) and not limiter.can_sample(9)
    assert limiter.insert_allowance() == 10 + 50


@pytest.mark.parametrize("actor_speed", [0.2, 1.0, 5.0])
def test_the_ratio_is_held_whatever_the_speed_of_either_side(actor_speed):
    """A simulated learner and actor at random speeds: the measured ratio ends within 10% of the target, and
    neither side ever goes past its edge of the band."""
    rng = np.random.default_rng(0)
    limiter = SampleToInsertRatio(samples_per_insert=8.0, min_size=200, error_buffer=512, sample_ahead=32)
    batch, chunk = 32, 16
    for _ in range(20_000):
        if rng.random() < actor_speed / (1 + actor_speed):
            if limiter.inserts + chunk <= limiter.insert_allowance():
                limiter.inserted(chunk)
        elif limiter.can_sample(batch):
            limiter.sampled(batch)
        diff = limiter.inserts * 8.0 - limiter.samples
        assert limiter.min_diff <= diff or limiter.inserts < limiter.min_size
        assert diff <= limiter.max_diff + 8.0 * chunk
    assert limiter.ratio() == pytest.approx(8.0, rel=0.1)
    while limiter.on_track(batch):  # the end of training drains to the exact ratio
        limiter.sampled(batch)
    assert limiter.ratio() == pytest.approx(8.0, rel=0.1) and limiter.ratio() <= 8.0 + batch / (limiter.inserts - 200)


@pytest.mark.parametrize(("args", "message"), [((0.0, 1, 1.0), "samples_per_insert"), ((1.0, -1, 1.0), "min_size")])
def test_bad_values_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        SampleToInsertRatio(*args)
