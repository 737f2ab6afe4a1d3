"""Counter-based random numbers: number ``k`` depends only on ``(seed, stream, k)``.

The procedural data sets draw every random choice for image ``k`` from here, so image ``k`` is the
same whether you generate 10 images or 100,000 (``ProceduralSprites(10, seed)`` is a prefix of
``ProceduralSprites(100, seed)``), and a whole batch is a few vectorised numpy operations.

The mixing function is SplitMix64 (Steele, Lea & Flood 2014), the seeding hash of many PRNGs.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective scramble of uint64 values (wrap-around arithmetic)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def random_bits(seed: int, stream: int, index: np.ndarray) -> np.ndarray:
    """64 random bits for each entry of ``index`` (int array): a uint64 array of the same shape."""
    key = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    key = _splitmix64(key ^ np.uint64(stream & 0xFFFFFFFF))
    with np.errstate(over="ignore"):
        return _splitmix64(np.asarray(index).astype(np.uint64) * _GOLDEN + key)


def random_integers(seed: int, stream: int, index: np.ndarray, high) -> np.ndarray:
    """Integers in ``[0, high)`` (``high``: int or int array broadcastable to ``index``), int64."""
    high = np.asarray(high, dtype=np.uint64)
    return (random_bits(seed, stream, index) % high).astype(np.int64)


def random_uniform(seed: int, stream: int, index: np.ndarray, low=0.0, high=1.0) -> np.ndarray:
    """Floats uniform in ``[low, high)``, float64, one per entry of ``index``."""
    u = (random_bits(seed, stream, index) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return low + (high - low) * u
