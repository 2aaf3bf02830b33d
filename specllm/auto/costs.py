"""What a decode costs on this machine, measured so that it heals.

T_target(n), the time of one target decode of n tokens, is kept as two parts:

- the machine's current speed, T(1): re-measured when the engine loads and by every one-token
  decode (plain rounds, and a forced plain round now and then when none happened lately);
- the shape T(n) / T(1) per batch size, learned from this run's decodes against the current
  T(1), so a busy spell that slows everything does not change it.

A profile saved by an earlier run is only a prior. Sizes this run has measured ("fresh") win
over it; the sizes it has not measured are the saved shape rescaled by how far the fresh sizes
were from it (one probe corrects a profile that is 3x off everywhere), and sizes no one has
measured come from a line fitted through the measured ones. Sizes not verified lately are
probed now and then (see `stale_size`), and two sizes are timed when the engine loads. A run saves only what it measured itself, so a noisy
run cannot leave the next one a worse profile than it found.

A busy machine (other processes on the cores: contention.py) slows decodes of different sizes
by different factors, so a decode timed then is neither learned nor saved, and a run whose
decodes were mostly busy saves nothing. A shape that falls with n is never saved, and a saved
one that falls far (a poisoned profile) is neither used nor kept.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from .contention import ContentionMeter

if TYPE_CHECKING:
    from ..llama import Context

# Profiles of another layout are ignored: version 1 stored absolute times per size; version 2
# timed a model draft with the history the model first caught up on, so its draft time and its
# verdict on the draft model (which then never looked at the model again) are not to be kept.
PROFILE_VERSION = 3
# Weight of a new T(1) measurement: about the last 5-10 plain decodes count.
SPEED_EMA = 0.2
# Weight of a new T(n)/T(1) measurement for one size (sizes are seen less often than T(1)).
SHAPE_EMA = 0.3
# A T(1) older than this many rounds is refreshed by one forced plain round: long runs of
# drafted rounds would otherwise compare against a stale plain speed.
PLAIN_PROBE_INTERVAL = 64
# Sizes the load-time calibration times when there is no profile: every small size (CPU
# kernels make T(n) irregular there) and the powers of two, each with its +1 (k drafts verify
# k + 1 tokens).
CALIBRATION_SIZES = (1, 2, 3, 4, 5, 6, 8, 9, 12, 16, 17, 24, 32, 33, 48, 64, 65)
# Each calibration size is timed this many times (the fastest counts: load only slows).
CALIBRATION_REPEATS = 2
# Sizes timed when a saved profile is loaded: T(1) twice (the faster counts), T(2) (what a
# one-token draft costs, the first step of every copy), and two sizes whose ratio to it says
# how far the saved shape is off (about 0.8 s on a 2-core CPU).
LOAD_CHECK_SIZES = (1, 1, 2, 3, 9)
# Sizes probed during a run when it has not measured them yet: only T(2), the cost of a
# one-token draft (a calibration or a load check has usually measured it). Larger sizes are
# measured by the drafts that use them (see the policy's UNMEASURED_OPTIMISM); a rejected
# probe of 5 tokens would cost 2-3 plain steps.
PROBE_LADDER = (2,)
# A fresh shape point needs this many measurements before it is saved for the next run.
MIN_OBSERVATIONS_TO_SAVE = 2
# A saved shape whose T(n)/T(1) falls below this share of a smaller size's is poisoned (timed
# on a busy machine, or not written by this code): the profile is neither used nor kept.
# Smaller dips are timing noise of an older profile, and are evened out.
POISONED_DIP = 0.9


@dataclass
class ShapePoint:
    ratio: float  # T(n) / T(1)
    fresh: int = 0  # measurements in this run (0: from the saved profile)
    saved: Optional[float] = None  # the saved profile's ratio, when there was one


@dataclass
class CostModel:
    """T_target(n) = T(1) x shape(n), and the draft model's time per token."""

    t1: float = 0.0  # seconds per one-token target decode, now
    shape: dict[int, ShapePoint] = field(default_factory=dict)
    draft_t1: float = 0.0  # seconds per one-token draft decode
    # Tokens/s of model-draft rounds relative to plain decoding, as last measured here.
    model_rate_ratio: Optional[float] = None
    t1_fresh: int = 0  # one-token decodes measured in this run (on a quiet machine)
    draft_t1_fresh: int = 0  # draft decodes measured in this run (on a quiet machine)
    rounds: int = 0
    last_plain_round: int = 0
    # ratio(n) as last computed: asked for every candidate length of every draft each round,
    # and a fitted or rescaled one walks every point. Emptied whenever the shape changes.
    _ratios: dict[int, float] = field(default_factory=dict, repr=False, compare=False)
    # Judges each timed decode busy or quiet (see contention.py).
    meter: ContentionMeter = field(default_factory=ContentionMeter, repr=False, compare=False)

    # --- what the policy asks -------------------------------------------------------------
    def target_time(self, n: int) -> float:
        return self.t1 * self.ratio(n) if n > 1 else self.t1

    def plain_rate(self) -> float:
        """Tokens per second of plain decoding: 1 / T(1) (0 before anything is measured)."""
        return 1.0 / self.t1 if self.t1 > 0 else 0.0

    def draft_time(self, n: int = 1) -> float:
        return self.draft_t1 * n

    def catch_up_time(self, n: int) -> float:
        """A draft model's one decode of n history tokens it has not seen: its T(1) times the
        target's shape T(n)/T(1) (the same machine and the same kind of model; the draft's own
        shape is not measured)."""
        return self.draft_t1 * self.ratio(n) if n > 0 else 0.0

    def ratio(self, n: int) -> float:
        """T(n) / T(1): measured in this run, else the saved profile rescaled, else fitted; never
        below the ratio of a smaller size (a decode of more tokens does more work: a dip is noise,
        and a size priced below a smaller one would be bet on for nothing), as a saved shape."""
        if n <= 1:
            return 1.0
        cached = self._ratios.get(n)
        if cached is None:
            below = max((m for m in self.shape if m < n), default=1)
            cached = self._ratios[n] = max(self.ratio(below), self._ratio(n))
        return cached

    def _ratio(self, n: int) -> float:
        point = self.shape.get(n)
        if point is not None and point.fresh:
            return point.ratio
        # Between two sizes this run measured, their line: a saved point in between may come
        # from a busy spell, and this run's own measurements around it are better evidence.
        fresh = sorted((m, p.ratio) for m, p in self.shape.items() if p.fresh)
        bracketed = _interpolate(fresh, n)
        if bracketed is not None:
            return bracketed
        if point is not None:
            return point.ratio * self._stale_correction()
        return self._fitted(n)

    def measured_up_to(self) -> int:
        """The largest batch size this run has measured (1: none but T(1))."""
        return max((n for n, p in self.shape.items() if p.fresh), default=1)

    def _stale_correction(self) -> float:
        """How far this run's measurements are from the saved profile (geometric mean over the
        sizes measured fresh; the saved value of a size it lacks is interpolated)."""
        saved = sorted((n, p.saved) for n, p in self.shape.items() if p.saved)
        logs = []
        for n, point in self.shape.items():
            reference = point.saved or _interpolate(saved, n)
            if point.fresh and reference:
                logs.append(math.log(point.ratio / reference))
        return math.exp(sum(logs) / len(logs)) if logs else 1.0

    def _fitted(self, n: int) -> float:
        """Between measured sizes: linear interpolation; beyond them: a line through the origin
        point (1, 1) and the measured sizes (least squares on the slope, which is never < 0)."""
        known = sorted((m, self.ratio(m)) for m in self.shape)
        if not known:
            return float(n)  # nothing measured: assume cost grows like the batch (pessimistic)
        below = [(m, r) for m, r in known if m < n]
        above = [(m, r) for m, r in known if m > n]
        if below and above:
            (m0, r0), (m1, r1) = below[-1], above[0]
            return r0 + (r1 - r0) * (n - m0) / (m1 - m0)
        xs = [m - 1 for m, _ in known]
        ys = [r - 1 for _, r in known]
        slope = max(sum(x * y for x, y in zip(xs, ys)) / max(sum(x * x for x in xs), 1e-12), 0.0)
        fitted = 1.0 + slope * (n - 1)
        if above:  # smaller than every measured size: never above the smallest one
            return min(fitted, above[0][1])
        return max(fitted, below[-1][1])  # larger than every measured size: never below the largest

    def stale_size(self, max_n: int) -> Optional[int]:
        """The smallest ladder size up to max_n that this run has not measured, or None."""
        for n in PROBE_LADDER:
            if n > max_n:
                return None
            point = self.shape.get(n)
            if point is None or not point.fresh:
                return n
        return None

    def wants_plain_probe(self) -> bool:
        return self.rounds - self.last_plain_round >= PLAIN_PROBE_INTERVAL

    # --- what decodes tell it -------------------------------------------------------------
    def observe_target(self, n: int, seconds: float, busy: bool = False) -> None:
        """A target decode of n tokens took `seconds`; `busy`: on a busy machine, so it tells
        nothing about this machine's costs (a plain round still counts as the probe it was)."""
        self.rounds += 1
        if n == 1:
            self.last_plain_round = self.rounds
        if seconds <= 0 or busy:
            return
        if n == 1:
            self.t1 = _ema(self.t1, seconds, SPEED_EMA, replace=not self.t1_fresh)
            self.t1_fresh += 1
            return
        if not self.t1_fresh:
            return  # a ratio needs this run's T(1)
        self._ratios.clear()
        point = self.shape.get(n)
        ratio = seconds / self.t1
        if point is None or not point.fresh:
            self.shape[n] = ShapePoint(ratio, fresh=1, saved=point.ratio if point is not None else None)
        else:
            point.ratio = _ema(point.ratio, ratio, SHAPE_EMA)
            point.fresh += 1

    def observe_draft(self, n_tokens: int, seconds: float, busy: bool = False) -> None:
        if n_tokens > 0 and seconds > 0 and not busy:
            self.draft_t1 = _ema(self.draft_t1, seconds / n_tokens, SPEED_EMA, replace=not self.draft_t1_fresh)
            self.draft_t1_fresh += 1

    # --- measuring ------------------------------------------------------------------------
    def measure_speed(self, target: "Context", draft: Optional["Context"] = None) -> None:
        """This machine's speed now, before the first round: T(1) (a saved one may come from a
        busy spell, or a quieter one) and two more sizes, so that a saved shape that is off is
        rescaled from the start (see ratio), and the draft model's T(1): a saved one that is
        too high would keep the model from ever being looked at, so never corrected. Decodes
        timed on a busy machine are dropped: the saved profile stands until quiet decodes
        correct it."""
        self._measure_draft(draft)
        timed = time_batches(target, LOAD_CHECK_SIZES, keep_all=True, meter=self.meter)
        plain = [seconds for n, seconds, busy in timed if n == 1 and not busy]
        if not plain:
            return
        self.t1, self.t1_fresh, self.last_plain_round = min(plain), 1, self.rounds
        self._ratios.clear()
        for n, seconds, busy in timed:
            if n > 1 and not busy:
                point = self.shape.get(n)
                self.shape[n] = ShapePoint(seconds / self.t1, fresh=1, saved=point.saved if point else None)

    def calibrate(self, target: "Context", draft: Optional["Context"], max_batch: int) -> None:
        """Time the calibration sizes up to max_batch on scratch positions. Each size is timed
        right after a one-token decode, twice, and kept as a ratio to it: a machine whose load
        changes during the calibration still gets the right shape. A size timed only on a busy
        machine is kept for this run as a prior (corrected by quiet decodes, never saved)."""
        sizes = sorted({n for n in CALIBRATION_SIZES if 1 < n <= max_batch} | {max_batch} - {1})
        schedule = [m for n in sizes for m in (1, n)] * CALIBRATION_REPEATS
        times = time_batches(target, schedule, keep_all=True, meter=self.meter)
        plain = [(seconds, busy) for n, seconds, busy in times if n == 1]
        if not plain:
            return
        quiet = [seconds for seconds, busy in plain if not busy]
        self.t1, self.t1_fresh = min(quiet or [seconds for seconds, _ in plain]), int(bool(quiet))
        self._ratios.clear()
        for n in sizes:
            pairs = [(b / a, busy_a or busy_b) for (m0, a, busy_a), (m1, b, busy_b) in zip(times, times[1:])
                     if m0 == 1 and m1 == n and a > 0]
            quiet_ratios = [r for r, busy in pairs if not busy]
            if quiet_ratios:
                self.shape[n] = ShapePoint(min(quiet_ratios), fresh=MIN_OBSERVATIONS_TO_SAVE)
            elif pairs:
                prior = min(r for r, _ in pairs)
                self.shape[n] = ShapePoint(prior, saved=prior)
        # Even out what a busy spell bent (a fresh point is this run's measurement and stays).
        for n, ratio in _monotone({n: p.ratio for n, p in self.shape.items()}).items():
            if not self.shape[n].fresh:
                self.shape[n].ratio = self.shape[n].saved = ratio
        self._measure_draft(draft)

    def _measure_draft(self, draft: Optional["Context"]) -> None:
        """The draft model's one-token decode, timed now: a saved time is a prior only."""
        if draft is None:
            return
        timed = time_batches(draft, (1, 1), keep_all=True, meter=self.meter)
        quiet_draft = [seconds for _, seconds, busy in timed if not busy]
        if quiet_draft:
            self.draft_t1, self.draft_t1_fresh = min(quiet_draft), 1
        elif timed and not self.draft_t1:
            self.draft_t1 = min(seconds for _, seconds, _ in timed)

    # --- the profile kept between runs ------------------------------------------------------
    def save(self, path: Path, key: str) -> None:
        """Keep what this run measured on a quiet machine; what it did not measure stays as it
        was saved, unless it contradicts this run or the saved shape was poisoned."""
        try:
            data = json.loads(path.read_text()) if path.exists() else {}
            if not isinstance(data, dict):
                data = {}
        except (OSError, ValueError):
            data = {}
        entry = data.get(key) if isinstance(data.get(key), dict) else {}
        old_shape = _saved_shape(entry) or {}
        if not old_shape:
            entry = {}  # another layout, or poisoned: nothing of it is kept
        quiet_run = not self.meter.mostly_busy
        fresh = {n: p.ratio for n, p in self.shape.items() if p.fresh >= MIN_OBSERVATIONS_TO_SAVE} if quiet_run else {}
        shape = _merge_shapes(old_shape, fresh)
        if not shape:
            data.pop(key, None)
        else:
            data[key] = {
                "version": PROFILE_VERSION,
                "t1_seconds": self.t1 if self.t1_fresh and quiet_run else entry.get("t1_seconds", self.t1),
                "shape": {str(n): r for n, r in sorted(shape.items())},
                "draft_t1_seconds": (self.draft_t1 if self.draft_t1_fresh and quiet_run
                                     else entry.get("draft_t1_seconds", self.draft_t1)),
                "model_rate_ratio": self.model_rate_ratio if quiet_run else entry.get("model_rate_ratio"),
                "saved": time.time(),
            }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, path)
        except OSError:
            pass  # a cache we cannot write only costs a calibration next time

    def load(self, path: Path, key: str) -> bool:
        """Read a saved profile as this run's prior; False (nothing changed) when there is none,
        or it is of another layout, broken, or poisoned."""
        try:
            entry = json.loads(path.read_text())[key]
            shape = _saved_shape(entry)
            t1 = float(entry["t1_seconds"])
            draft_t1 = float(entry.get("draft_t1_seconds") or 0.0)
            ratio = entry.get("model_rate_ratio")
            model_rate_ratio = float(ratio) if ratio is not None else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
        if not (t1 > 0 and math.isfinite(t1)) or not shape:
            return False
        self.t1, self.draft_t1, self.model_rate_ratio = t1, draft_t1, model_rate_ratio
        self.shape = {n: ShapePoint(r, saved=r) for n, r in shape.items()}
        self.t1_fresh = self.draft_t1_fresh = 0
        self._ratios.clear()
        return True


def _saved_shape(entry) -> Optional[dict[int, float]]:
    """A saved entry's shape {n: T(n)/T(1)}, evened out to never fall with n; None if the entry
    is of another layout or broken, or its shape falls far somewhere (POISONED_DIP)."""
    try:
        if entry.get("version") != PROFILE_VERSION:
            return None
        shape = {int(n): float(r) for n, r in entry["shape"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not shape or not all(math.isfinite(r) and r > 0 for r in shape.values()):
        return None
    highest = 1.0
    for n in sorted(shape):
        if shape[n] < POISONED_DIP * highest:
            return None
        highest = max(highest, shape[n])
    return _monotone(shape)


def _monotone(shape: dict[int, float]) -> dict[int, float]:
    """The shape raised where it falls: never below 1 (T(1)), never below a smaller size's. A
    decode of more tokens does more work; a dip is noise or a busy spell, and the higher
    neighbour is the safer guess (a size priced too cheap is bet on)."""
    out, highest = {}, 1.0
    for n in sorted(shape):
        highest = out[n] = max(highest, shape[n])
    return out


def _merge_shapes(old: dict[int, float], fresh: dict[int, float]) -> dict[int, float]:
    """This run's measurements, and the saved sizes it did not measure that fit between them."""
    fresh = _monotone(fresh)
    merged = dict(fresh)
    for n, r in old.items():
        if n in fresh:
            continue
        below = max((v for m, v in fresh.items() if m < n), default=1.0)
        above = min((v for m, v in fresh.items() if m > n), default=math.inf)
        if below <= r <= above:
            merged[n] = r
    return _monotone(merged)


def _interpolate(points: list[tuple[int, float]], n: int) -> Optional[float]:
    """Linear interpolation in sorted (size, value) points; None outside them."""
    for (m0, r0), (m1, r1) in zip(points, points[1:]):
        if m0 <= n <= m1:
            return r0 + (r1 - r0) * (n - m0) / (m1 - m0)
    return None


def _ema(old: float, new: float, weight: float, replace: bool = False) -> float:
    return new if replace or old <= 0 else (1 - weight) * old + weight * new


def time_batches(ctx: "Context", sizes: Sequence[int], keep_all: bool = False,
                 meter: Optional[ContentionMeter] = None):
    """Decode scratch tokens after the cached ones, time each batch (after a warm-up), then
    forget them. {size: fastest seconds}, or with keep_all every (size, seconds, busy) in order
    (busy: judged by `meter` to have run on a busy machine; False without one)."""
    n_keep = ctx.n_past
    sizes = [n for n in sizes if n_keep + 1 + n <= ctx.n_ctx and n <= ctx.n_batch]
    if not sizes:
        return [] if keep_all else {}
    filler = ctx.model.vocab.tokenize(" the quick brown fox jumps over the lazy dog" * 4, add_special=False)
    filler = (filler * (1 + max(sizes) // max(len(filler), 1)))[: max(sizes) + 1]
    timed: list[tuple[int, float, bool]] = []
    try:
        ctx.decode(filler[:1])  # warm-up: first decodes allocate buffers
        for n in sizes:
            span = ContentionMeter.start()
            ctx.decode(filler[1 : 1 + n], all_logits=True)
            if meter is not None:
                seconds, busy = meter.stop(span)
            else:
                seconds, busy = time.perf_counter() - span.wall, False
            timed.append((n, seconds, busy))
            ctx.truncate(n_keep + 1)
    finally:
        ctx.truncate(n_keep)
    if keep_all:
        return timed
    fastest: dict[int, float] = {}
    for n, seconds, _ in timed:
        fastest[n] = min(fastest.get(n, seconds), seconds)
    return fastest
