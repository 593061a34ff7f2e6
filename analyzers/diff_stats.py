"""Box-plot statistics of a non-negative float32 sample, exact and without sorting, and of
the relative difference ``|B - A| / mean|A|`` of two tensors (:mod:`analyzers.diff` documents
the conventions: numpy's "linear" quartiles, matplotlib's 1.5 IQR whiskers)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from surgery.core.errors import SurgeryError

__all__ = ["BoxStats", "WHIS", "box_stats", "relative_diff_stats"]

WHIS = 1.5  # whiskers at WHIS * IQR beyond the quartiles
_SMALL = 1 << 14  # below this many elements a plain sort is cheaper than the radix histogram
_CHUNK = 1 << 18  # elements per pass chunk (1 MiB of float32: stays in cache between passes)


@dataclass(frozen=True)
class BoxStats:
    """Box-plot statistics of one sample, in the sample's units."""

    n: int
    mean: float
    q1: float
    median: float
    q3: float
    whisker_low: float
    whisker_high: float
    outliers: int  # beyond the whiskers, both sides
    outliers_high: int  # above whisker_high
    min: float
    max: float

    def scaled(self, factor: float) -> "BoxStats":
        f = float(factor)
        return BoxStats(self.n, self.mean * f, self.q1 * f, self.median * f, self.q3 * f, self.whisker_low * f,
                        self.whisker_high * f, self.outliers, self.outliers_high, self.min * f, self.max * f)


def _f32_bits(x: np.float32) -> int:
    return int(np.array([x], dtype=np.float32).view(np.int32)[0])


class _OrderStats:
    """Exact order statistics of a non-negative float32 sample without sorting it.

    For non-negative IEEE floats the bit pattern read as an integer is monotone in the value,
    so a histogram of the top 16 bits (sign+exponent+7 mantissa bits) locates the bucket of
    any rank in one pass, and a second histogram of the low 16 bits inside that bucket pins
    the exact value (every level-2 bucket holds a single bit pattern). Cost: a few O(n)
    vectorised passes, in cache-sized chunks, instead of an O(n log n) sort; the buckets a
    statistic needs are fetched together in one pass (:meth:`prefetch`). Small samples are
    simply sorted.
    """

    def __init__(self, d: np.ndarray, scratch: "_Scratch | None" = None):
        self.n = int(d.size)
        self.sorted = np.sort(d) if self.n <= _SMALL else None
        if self.sorted is None:
            self._scratch = scratch or _Scratch()
            self.bits = d.view(np.int32)
            hist = np.zeros(1 << 15, np.int64)
            for _, top in self._chunks():
                hist += np.bincount(top, minlength=1 << 15)
            self.cum1 = np.cumsum(hist)
            self._cum2: dict[int, np.ndarray] = {}

    def _chunks(self):
        """(start, top 16 bits as intp) per chunk; intp because np.bincount copies anything else."""
        for s in range(0, self.n, _CHUNK):
            part = self.bits[s:s + _CHUNK]
            yield s, np.right_shift(part, 16, out=self._scratch.ints(part.size))  # 0..0x7fff for d >= 0

    def _count_in(self, b: int) -> int:
        return int(self.cum1[b]) - (int(self.cum1[b - 1]) if b else 0)

    def prefetch(self, buckets) -> None:
        """Level-2 histograms of these top-16-bit buckets, all in one pass over the data."""
        if self.sorted is not None:
            return
        need = sorted({int(b) for b in buckets if 0 <= b < (1 << 15)} - set(self._cum2))
        need = [b for b in need if self._count_in(b)]
        if not need:
            return
        parts: dict[int, list[np.ndarray]] = {b: [] for b in need}
        for s, top in self._chunks():
            mask = self._scratch.mask(top.size)
            part = self.bits[s:s + top.size]
            for b in need:
                parts[b].append(np.compress(np.equal(top, b, out=mask), part))
        for b in need:
            low = np.bitwise_and(np.concatenate(parts[b]), 0xFFFF, dtype=np.intp)
            self._cum2[b] = np.cumsum(np.bincount(low, minlength=1 << 16))

    def _bucket(self, b: int) -> np.ndarray:
        if b not in self._cum2:
            self.prefetch([b])
        return self._cum2[b]

    def bucket_of_rank(self, k: int) -> int:
        return -1 if self.sorted is not None else int(np.searchsorted(self.cum1, k, side="right"))

    def bucket_of_value(self, x: float) -> int:
        """The bucket a float64 threshold falls in after rounding to float32 (either way)."""
        if self.sorted is not None or not (x >= 0) or math.isinf(x):
            return -1
        return _f32_bits(np.float32(x)) >> 16

    def kth(self, k: int) -> float:
        """The k-th smallest value (0-based)."""
        if self.sorted is not None:
            return float(self.sorted[k])
        b = int(np.searchsorted(self.cum1, k, side="right"))
        base = int(self.cum1[b - 1]) if b else 0
        low = int(np.searchsorted(self._bucket(b), k - base, side="right"))
        return float(np.array([(b << 16) | low], dtype=np.int32).view(np.float32)[0])

    def _count_le_f32(self, x: np.float32) -> int:
        if self.sorted is not None:
            return int(np.searchsorted(self.sorted, x, side="right"))
        xb = _f32_bits(x)
        if xb < 0:  # negative threshold: nothing is <= it
            return 0
        b = xb >> 16
        base = int(self.cum1[b - 1]) if b else 0
        if base == (int(self.cum1[b]) if b < len(self.cum1) else base):  # empty bucket
            return base
        return base + int(self._bucket(b)[xb & 0xFFFF])

    def count_le(self, x: float) -> int:
        """How many values are <= x (x a float64)."""
        if x < 0 or math.isnan(x):
            return 0
        f = np.float32(x)
        if float(f) > x:
            f = np.nextafter(f, np.float32(-np.inf))
        return self._count_le_f32(f)

    def count_lt(self, x: float) -> int:
        """How many values are < x (x a float64)."""
        if x <= 0 or math.isnan(x):
            return 0
        f = np.float32(x)
        if float(f) < x:
            f = np.nextafter(f, np.float32(np.inf))
        return self._count_le_f32(np.nextafter(f, np.float32(-np.inf)))

    def quantile(self, q: float) -> float:
        """numpy's default ("linear") quantile."""
        pos = q * (self.n - 1)
        lo = math.floor(pos)
        frac = pos - lo
        a = self.kth(lo)
        if frac == 0.0:
            return a
        b = self.kth(lo + 1)
        return a + frac * (b - a)


class _Scratch:
    """Reusable work arrays (one set per worker thread): repeated large allocations and
    frees fragment the heap and keep the process's memory high after the work is done.
    ``floats`` holds a whole tensor's differences; ``ints``/``mask`` one chunk."""

    def __init__(self, n: int = 0):
        self._f = np.empty(n, np.float32)
        self._i = np.empty(_CHUNK, np.intp)
        self._m = np.empty(_CHUNK, np.bool_)

    def floats(self, n: int) -> np.ndarray:
        if n > self._f.size:
            self._f = np.empty(n, np.float32)
        return self._f[:n]

    def ints(self, n: int) -> np.ndarray:
        return self._i[:n]

    def mask(self, n: int) -> np.ndarray:
        return self._m[:n]


def box_stats(d: np.ndarray, scratch: _Scratch | None = None) -> BoxStats:
    """Box-plot statistics of a non-negative float32 sample (matplotlib's conventions:
    linear-interpolated quartiles, whiskers at the most extreme values within 1.5 IQR)."""
    d = np.ascontiguousarray(d, dtype=np.float32).reshape(-1)
    n = d.size
    if n == 0:
        nan = float("nan")
        return BoxStats(0, nan, nan, nan, nan, nan, nan, 0, 0, nan, nan)
    mean = float(np.add.reduce(d)) / n  # float32 pairwise summation, as np.mean (and matplotlib)
    mn, mx = float(d.min()), float(d.max())  # NaN if any is NaN
    if math.isnan(mx) or math.isnan(mn) or math.isnan(mean):
        nan = float("nan")
        return BoxStats(n, nan, nan, nan, nan, nan, nan, 0, 0, nan, nan)
    os_ = _OrderStats(d, scratch)
    ranks = [r for q in (0.25, 0.5, 0.75) for r in (math.floor(q * (n - 1)), math.ceil(q * (n - 1)))]
    os_.prefetch(os_.bucket_of_rank(r) for r in ranks)
    q1, med, q3 = os_.quantile(0.25), os_.quantile(0.5), os_.quantile(0.75)
    iqr = q3 - q1
    # the buckets of the fences, and the last non-empty one below the upper fence's (whisker)
    fences = [os_.bucket_of_value(q1 - WHIS * iqr), os_.bucket_of_value(q3 + WHIS * iqr)]
    hb = fences[1]
    if hb > 0:
        fences.append(os_.bucket_of_rank(int(os_.cum1[hb - 1]) - 1) if os_.cum1[hb - 1] else -1)
    os_.prefetch(fences)
    n_low = os_.count_lt(q1 - WHIS * iqr)
    n_le_high = os_.count_le(q3 + WHIS * iqr)
    return BoxStats(
        n=n, mean=mean, q1=q1, median=med, q3=q3,
        whisker_low=mn if n_low == 0 else os_.kth(n_low),
        whisker_high=mx if n_le_high == n else os_.kth(n_le_high - 1),
        outliers=n_low + (n - n_le_high), outliers_high=n - n_le_high,
        min=mn, max=mx,
    )


def _as_f32(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.device.type == "meta":
        raise SurgeryError("cannot diff tensors on the meta device (the model holds no weights)")
    return t.to(device="cpu", dtype=torch.float32).contiguous().reshape(-1).numpy()


def relative_diff_stats(a: torch.Tensor, b: torch.Tensor, scratch: _Scratch | None = None
                        ) -> tuple[BoxStats, float, bool]:
    """Statistics of ``|b - a| / mean|a|`` -> (stats, mean|a|, relative).

    ``relative`` is False when mean|a| is 0; the statistics are then of ``|b - a|``.
    The sample is computed in float32; the scale (a positive constant) is applied to the
    statistics afterwards, which preserves their order and is exact up to float rounding.
    """
    if tuple(a.shape) != tuple(b.shape):
        raise SurgeryError(f"cannot diff tensors of shapes {list(a.shape)} and {list(b.shape)}")
    av, bv = _as_f32(a), _as_f32(b)  # views for float32 CPU tensors
    n = av.size
    scratch = scratch or _Scratch(n if n > _SMALL else 0)
    d = scratch.floats(n)
    scale = float(np.add.reduce(np.abs(av, out=d))) / n if n else 0.0
    np.subtract(bv, av, out=d)
    np.abs(d, out=d)
    raw = box_stats(d, scratch)
    if scale > 0 and math.isfinite(scale):
        return raw.scaled(1.0 / scale), scale, True
    return raw, scale, False
