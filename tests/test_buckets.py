"""Shape buckets: the sizes are compiled shapes, so they are pinned here."""

import pytest

from dss.buckets import bucket_length, next_pow2


def test_multiples():
    """Training batches, reference log-probs and eval log-likelihood rows: multiples of 64."""
    assert [bucket_length(n) for n in (-1, 0, 1, 64, 65, 1000)] == [64, 64, 64, 64, 128, 1024]
    assert [bucket_length(n, 8) for n in (0, 8, 9)] == [8, 8, 16]


def test_star_buckets_linear_then_two_per_octave():
    star = lambda n, step=8: bucket_length(n, step, per_octave=2, linear_up_to=512)  # noqa: E731
    assert [star(n) for n in (0, 1, 9, 512)] == [8, 8, 16, 512]
    assert [star(n) for n in (513, 768, 769, 1024, 1025, 1537, 3000)] == [768, 768, 1024, 1024, 1536, 2048, 3072]
    assert star(100, 64) == 128 and star(513, 64) == 768


def test_generate_buckets_four_per_octave():
    assert [bucket_length(n, 1, per_octave=4) for n in (1, 2, 3, 5, 8, 9, 10, 11, 13, 17, 100)] == \
        [1, 2, 3, 5, 8, 10, 10, 12, 14, 20, 112]
    gen = lambda n: bucket_length(n, 8, minimum=16, per_octave=4)  # noqa: E731
    assert [gen(n) for n in (0, 1, 16, 17, 33, 100, 130, 1000)] == [16, 16, 16, 24, 40, 112, 160, 1024]
    assert bucket_length(5, 4, per_octave=4) == 8  # rows: then a multiple of the data-parallel size


@pytest.mark.parametrize("n, expected", [(-2, 1), (0, 1), (1, 1), (2, 2), (3, 4), (64, 64), (65, 128)])
def test_next_pow2(n, expected):
    assert next_pow2(n) == expected
