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
_GOLDEN, _M1, _M2 = _U64(0x9E3779B97F4A7C15), _U64(0xBF58476D1CE4E5B9), _U64(0x94D049BB133111EB)
_STREAM_BASE = 1 << 63


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=_U64) + _GOLDEN
        z = (z ^ (z >> _U64(30))) * _M1
        z = (z ^ (z >> _U64(27))) * _M2
        return z ^ (z >> _U64(31))


def unit(x: np.ndarray) -> np.ndarray:
    return ((x >> _U64(11)).astype(np.float64) + 0.5) / 2.0**53


def position_key(seed: int, t: int) -> np.uint64:
    return mix(mix(np.asarray([seed % (1 << 64)], dtype=_U64)) ^ _U64(t))[0]


class GumbelNoise:
    """g(seed, t, i) as defined above; the lucky set H of each position is computed once."""

    def __init__(self, seed: int):
        self.seed = seed
        # t -> (lucky ids, their g, the vocabulary size they cover)
        self._lucky: OrderedDict[int, tuple[np.ndarray, np.ndarray, int]] = OrderedDict()

    def key(self, t: int) -> np.uint64:
        return position_key(self.seed, t)

    def lucky(self, t: int, n_vocab: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids in H below n_vocab, ascending; their g)."""
        cached = self._lucky.get(t)
        if cached is None or cached[2] < n_vocab:
            cached = (*self._make_lucky(t, n_vocab), n_vocab)
            self._lucky[t] = cached
            while len(self._lucky) > CACHED_POSITIONS:
                self._lucky.popitem(last=False)
        ids, g, _ = cached
        n = int(np.searchsorted(ids, n_vocab))
        return ids[:n], g[:n]

    def _make_lucky(self, t: int, n_vocab: int) -> tuple[np.ndarray, np.ndarray]:
        key = self.key(t)
        log_keep = math.log1p(-EPS)
        positions: list[np.ndarray] = []
        last, j = -1, 1
        chunk = max(64, int(n_vocab * EPS * 1.5))  # most positions need one chunk of the stream
        while last < n_vocab:
            stream = np.arange(j, j + chunk, dtype=_U64) + _U64(_STREAM_BASE)
            e = unit(mix(key ^ mix(stream)))
            a = last + np.cumsum(1 + np.floor(np.log(e) / log_keep).astype(np.int64))
            positions.append(a)
            last, j = int(a[-1]), j + chunk
        ids = np.concatenate(positions)
        ids = ids[ids < n_vocab]
        v = unit(mix(key ^ mix(ids.astype(_U64))))
        return ids, -np.log(-np.log1p(-EPS * v))

    def values(self, t: int, ids: np.ndarray, n_vocab: int) -> np.ndarray:
        """g for the given ids (any order), lucky or not."""
        ids = np.asarray(ids, dtype=np.int64)
        lucky_ids, lucky_g = self.lucky(t, n_vocab)
        v = unit(mix(self.key(t) ^ mix(ids.astype(_U64))))
        g = -np.log(-math.log1p(-EPS) - np.log(v))
        if lucky_ids.size:
            where = np.searchsorted(lucky_ids, ids)
            where = np.minimum(where, lucky_ids.size - 1)
            hit = lucky_ids[where] == ids
            g[hit] = lucky_g[where[hit]]
        return g
