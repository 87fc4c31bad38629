"""Seeds derived from tuples of ints, so that every sample, epoch and rank gets its own stream."""

from __future__ import annotations

__all__ = ["mix"]

_MASK64 = (1 << 64) - 1


def mix(*values: int) -> int:
    """A 63-bit seed from a tuple of ints (splitmix64 rounds)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = ((h ^ (int(v) & _MASK64)) + 0x9E3779B97F4A7C15) & _MASK64
        z = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h & ((1 << 63) - 1)
