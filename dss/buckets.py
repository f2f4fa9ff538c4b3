"""Shape buckets: lengths and row counts rounded up to a few sizes, so that few programs compile.

Pure integer arithmetic with no dss imports, so every module (data, STAR, generation, eval) can
use it without import cycles. Changing a rounding here changes compiled shapes everywhere.
"""

from __future__ import annotations

__all__ = ["bucket_length", "next_pow2"]


def bucket_length(n: int, multiple: int = 64, *, minimum: int = 1, per_octave: int = 0, linear_up_to: int = 0) -> int:
    """`n` (at least `minimum` and 1) rounded up to a multiple of `multiple`.

    With `per_octave` > 0, a length above `linear_up_to` is first rounded up to one of
    `per_octave` sizes per power of two: for 2^k < n <= 2^(k+1), to a multiple of 2^k / per_octave
    (e.g. per_octave=4: 5, 6, 7, 8 x 2^(k-2)), so the padding stays within 1/per_octave of n while
    the number of sizes grows only logarithmically.
    """
    n = max(int(n), minimum, 1)
    if per_octave > 0 and n > max(linear_up_to, 1):
        grain = max(1, (1 << ((n - 1).bit_length() - 1)) // per_octave)
        n = -(-n // grain) * grain
    return -(-n // multiple) * multiple


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << (max(int(n), 1) - 1).bit_length()
