"""Counter-based Gumbel noise: g(seed, t, token), the same for every drafter and every run.

Drafter-invariant sampling (Daliri, Musco and Suresh 2024) picks the token at output position t
as argmax_i(logits_i / T + g_i) with noise that depends only on (seed, t, i). Any model that
uses the same noise at the same position makes the same choice when its distribution agrees,
which is what lets a draft match the target, and the text depends on the seed alone.

The exact definition (also in the README, for independent re-reads); all integers are uint64,
arithmetic mod 2^64:

    mix(x)   = splitmix64's finalizer: z = x + 0x9E3779B97F4A7C15
               z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
               z = (z ^ (z >> 27)) * 0x94D049BB133111EB
               return z ^ (z >> 31)
    unit(x)  = ((x >> 11) + 0.5) / 2^53                      in (0, 1)
    key      = mix(mix(seed) ^ t)
    v_i      = unit(mix(key ^ mix(i)))                       per-token uniform
    e_j      = unit(mix(key ^ mix(2^63 + j))),  j = 1, 2, ...
    a_0 = -1,  a_j = a_(j-1) + 1 + floor(ln(e_j) / ln(1 - EPS))
    H        = {a_1, a_2, ...}                               every id is in H with chance EPS
    g_i      = -ln(-log1p(-EPS * v_i))                       if i in H   (u_i = 1 - EPS v_i)
    g_i      = -ln(-log1p(-EPS) - ln(v_i))                   otherwise   (u_i = (1 - EPS) v_i)

So u_i is uniform on (0, 1) and g_i = -ln(-ln u_i) is a standard Gumbel. The split into H and
the rest is what makes the noise cheap: outside H, g_i < G_LOW = -ln(-log1p(-EPS)) (6.93), so a
token whose scaled logit is more than G_LOW below the best perturbed value found so far cannot
win and needs no noise at all. H itself has about EPS x 152k = 148 ids, generated directly by
its geometric gaps, so a choice costs one pass over the logits plus work on a few hundred ids.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

# Share of ids whose noise is drawn from the top EPS of the uniform range. Smaller: fewer ids in
# H, but a wider band (G_LOW) of logits below the maximum that needs noise. 2^-10 keeps both to
# a few hundred ids on a 152k vocabulary.
EPS = 2.0**-10
G_LOW = -math.log(-math.log1p(-EPS))  # every id outside H has g < G_LOW
# Positions whose lucky set is kept: a round asks for the same positions twice (draft, verify).
CACHED_POSITIONS = 512

_U64 = np.uint64
_MASK = (1 << 64) - 1
_GOLDEN, _M1, _M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_STREAM_BASE = 1 << 63
_LOG_KEEP = math.log1p(-EPS)


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on a uint64 array (wrapping arithmetic: numpy arrays do not warn)."""
    z = np.asarray(x, dtype=_U64) + _U64(_GOLDEN)
    z = (z ^ (z >> _U64(30))) * _U64(_M1)
    z = (z ^ (z >> _U64(27))) * _U64(_M2)
    return z ^ (z >> _U64(31))


def mix_int(x: int) -> int:
    """mix() on one Python int: no array overhead for a single id."""
    z = (x + _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def unit(x: np.ndarray) -> np.ndarray:
    return ((x >> _U64(11)).astype(np.float64) + 0.5) / 2.0**53


def unit_int(x: int) -> float:
    return ((x >> 11) + 0.5) / 2.0**53


def position_key(seed: int, t: int) -> int:
    return mix_int(mix_int(seed & _MASK) ^ t)


class _IdHashes:
    """mix(i) for every id below a bound, computed once per process (about 5 ms for 152k ids)."""

    def __init__(self):
        self.table = np.zeros(0, dtype=_U64)

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        if ids.size and int(ids.max()) >= self.table.size:
            self.table = mix(np.arange(max(int(ids.max()) + 1, 2 * self.table.size), dtype=_U64))
        return self.table[ids]


_id_hashes = _IdHashes()


class GumbelNoise:
    """g(seed, t, i) as defined above; the lucky set H of each position is computed once."""

    def __init__(self, seed: int):
        self.seed = seed
        # t -> (key, lucky ids, their g, the vocabulary size they cover)
        self._positions: OrderedDict[int, tuple[int, np.ndarray, np.ndarray, int]] = OrderedDict()

    def _position(self, t: int, n_vocab: int) -> tuple[int, np.ndarray, np.ndarray, int]:
        cached = self._positions.get(t)
        if cached is None or cached[3] < n_vocab:
            key = position_key(self.seed, t)
            cached = (key, *self._make_lucky(key, n_vocab), n_vocab)
            self._positions[t] = cached
            while len(self._positions) > CACHED_POSITIONS:
                self._positions.popitem(last=False)
        return cached

    def lucky(self, t: int, n_vocab: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids in H below n_vocab, ascending; their g)."""
        _, ids, g, _ = self._position(t, n_vocab)
        n = int(np.searchsorted(ids, n_vocab))
        return ids[:n], g[:n]

    @staticmethod
    def _make_lucky(key: int, n_vocab: int) -> tuple[np.ndarray, np.ndarray]:
        positions: list[np.ndarray] = []
        last, j = -1, 1
        chunk = max(64, int(n_vocab * EPS * 1.5))  # most positions need one chunk of the stream
        key64 = _U64(key)
        while last < n_vocab:
            stream = np.arange(j, j + chunk, dtype=_U64) + _U64(_STREAM_BASE)
            e = unit(mix(key64 ^ mix(stream)))
            a = last + np.cumsum(1 + np.floor(np.log(e) / _LOG_KEEP).astype(np.int64))
            positions.append(a)
            last, j = int(a[-1]), j + chunk
        ids = np.concatenate(positions)
        ids = ids[ids < n_vocab]
        v = unit(mix(key64 ^ _id_hashes(ids)))
        return ids, -np.log(-np.log1p(-EPS * v))

    def values(self, t: int, ids: np.ndarray, n_vocab: int) -> np.ndarray:
        """g for the given ids (any order), lucky or not."""
        ids = np.asarray(ids, dtype=np.int64)
        key, lucky_ids, lucky_g, _ = self._position(t, n_vocab)
        g = -np.log(-_LOG_KEEP - np.log(unit(mix(_U64(key) ^ _id_hashes(ids)))))
        if lucky_ids.size:
            where = np.minimum(np.searchsorted(lucky_ids, ids), lucky_ids.size - 1)
            hit = lucky_ids[where] == ids
            g[hit] = lucky_g[where[hit]]
        return g

    def value(self, t: int, i: int, n_vocab: int) -> float:
        """g for one id, without array overhead."""
        key, lucky_ids, lucky_g, _ = self._position(t, n_vocab)
        v = unit_int(mix_int(key ^ mix_int(i)))
        where = int(np.searchsorted(lucky_ids, i))
        if where < lucky_ids.size and lucky_ids[where] == i:
            return float(lucky_g[where])
        return -math.log(-_LOG_KEEP - math.log(v))
