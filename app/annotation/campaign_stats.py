"""The statistics of a campaign's results, as pure functions of small tables (app.annotation.campaigns builds
the tables from the store).

* Per-system means with a bootstrap 95% interval: an item's score is the mean of its annotators' scores, and the
  items are resampled (1,000 times, a fixed seed, so a report does not change between two looks).
* Win rates per pair of systems with Wilson's 95% interval, over decisive judgements (ties and "both bad" are
  their own shares, as app.annotation.agreement does for comparisons).
* Krippendorff's alpha (app.annotation.agreement.krippendorff_alpha) with the number of items it rests on and a
  warning below 30.
* Span agreement: character-overlap F1 between two annotators' spans on the same text, pooled over every pair
  (micro average: 2·Σ|A∩B| / Σ(|A|+|B|)).
* Human–metric correlation: Pearson's r and Kendall's tau-b at segment and system level.
"""
from __future__ import annotations

import itertools
import statistics
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .agreement import krippendorff_alpha, wilson_interval

RESAMPLES = 1000
SEED = 0
MIN_ALPHA_ITEMS = 30


def bootstrap_mean(values: Sequence[float], *, resamples: int = RESAMPLES, seed: int = SEED,
                   level: float = 0.95) -> tuple[float, float, float] | None:
    """(mean, low, high): the mean of `values` and the percentile bootstrap interval of the mean; None if empty."""
    if not values:
        return None
    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(x.mean()), float(lo), float(hi)


@dataclass(frozen=True)
class SystemScore:
    system: str
    score: str          # the score's name ("esa", "mqm", …)
    items: int
    judgements: int
    mean: float
    ci_low: float
    ci_high: float


def system_scores(rows: Iterable[tuple[Hashable, str, str, float]], **bootstrap: Any) -> list[SystemScore]:
    """Mean score per (system, score name) over items, from rows (item, system, score name, value): each item
    counts once, with the mean of its annotators' values. Sorted by system, then score name."""
    cells: dict[tuple[str, str], dict[Hashable, list[float]]] = defaultdict(lambda: defaultdict(list))
    for item, system, name, value in rows:
        cells[system, name][item].append(float(value))
    out = []
    for (system, name), by_item in sorted(cells.items()):
        per_item = [sum(v) / len(v) for v in by_item.values()]
        mean, lo, hi = bootstrap_mean(per_item, **bootstrap)
        out.append(SystemScore(system, name, len(per_item), sum(map(len, by_item.values())), mean, lo, hi))
    return out


@dataclass(frozen=True)
class WinRate:
    """System X against system Y (X before Y by name); the rate and interval are over decisive judgements."""
    system_x: str
    system_y: str
    judgements: int
    x_wins: int
    y_wins: int
    ties: int
    both_bad: int
    x_win_rate: float | None
    ci_low: float | None
    ci_high: float | None


def win_rates(outcomes: Iterable[tuple[str, str, str]]) -> list[WinRate]:
    """Win rates from outcomes (system, other system, result): result is the winner's name, "tie" or
    "both_bad". Every judgement counts once."""
    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for one, two, result in outcomes:
        x, y = sorted((one, two))
        counts[x, y]["x" if result == x else "y" if result == y else result] += 1
    out = []
    for (x, y), c in sorted(counts.items()):
        decisive = c["x"] + c["y"]
        ci = wilson_interval(c["x"], decisive)
        out.append(WinRate(x, y, sum(c.values()), c["x"], c["y"], c["tie"], c["both_bad"],
                           c["x"] / decisive if decisive else None, *(ci or (None, None))))
    return out


@dataclass(frozen=True)
class Alpha:
    name: str           # what was compared ("esa", "preference", …)
    metric: str
    alpha: float | None
    items: int          # units with two or more values
    values: int
    warning: str = ""


def alpha(units: Mapping[Hashable, Mapping[str, Any]], metric: str, name: str = "") -> Alpha:
    """Krippendorff's alpha over `units` ({unit: {annotator: value}}), with a warning when it rests on fewer than
    30 units or is undefined."""
    paired = [list(u.values()) for u in units.values() if len(u) >= 2]
    value = krippendorff_alpha(paired, metric) if paired else None
    n = len(paired)
    warning = ""
    if n < MIN_ALPHA_ITEMS:
        warning = f"only {n} item(s) judged by two or more annotators: alpha is unreliable below {MIN_ALPHA_ITEMS}"
    elif value is None:
        warning = "every value is the same: alpha is undefined without variation"
    return Alpha(name, metric, value, n, sum(map(len, paired)), warning)


def annotator_alpha(units: Mapping[Hashable, Mapping[str, Any]], who: str, metric: str) -> float | None:
    """`who`'s agreement with the others: alpha over the pairs (who's value, another's value) of every unit they
    share, each pair a unit of its own."""
    pairs = [[u[who], v] for u in units.values() if who in u for other, v in u.items() if other != who]
    return krippendorff_alpha(pairs, metric) if pairs else None


def covered(spans: Iterable[Mapping[str, Any]]) -> set[tuple[str, int]]:
    """The characters the spans cover, as (side, index)."""
    return {(s["side"], i) for s in spans for i in range(s["start"], s["end"])}


@dataclass(frozen=True)
class SpanAgreement:
    pairs: int              # pairs of annotators on the same text
    f1: float | None        # None when no pair marked anything


def span_agreement(units: Mapping[Hashable, Mapping[str, Sequence[Mapping[str, Any]]]],
                   who: str | None = None) -> SpanAgreement:
    """Character-overlap F1 between annotators' spans on the same unit ({unit: {annotator: spans}}), pooled over
    every pair of annotators (only the pairs with `who` when given)."""
    both = sizes = pairs = 0
    for unit in units.values():
        for a, b in itertools.combinations(sorted(unit), 2):
            if who is not None and who not in (a, b):
                continue
            ca, cb = covered(unit[a]), covered(unit[b])
            both, sizes, pairs = both + len(ca & cb), sizes + len(ca) + len(cb), pairs + 1
    return SpanAgreement(pairs, 2 * both / sizes if sizes else None)


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass(frozen=True)
class CheckRate:
    checks: int             # checks that could be told (passed or failed)
    passed: int
    rate: float | None


def check_rate(verdicts: Iterable[bool | None]) -> CheckRate:
    """Pass rate of attention checks; None verdicts (could not be told) are left out."""
    told = [v for v in verdicts if v is not None]
    return CheckRate(len(told), sum(told), sum(told) / len(told) if told else None)


# ---------------------------------------------------------------------------------------------------------------
# Human–metric correlation, as WMT's metrics task reports it: Pearson's r and Kendall's tau-b (ties corrected, as
# scipy.stats.kendalltau's default), at segment level (one point per item and system) and system level.

MAX_KENDALL_POINTS = 20_000   # tau's pair matrix is built in row blocks: O(n²) time, O(n·block) memory


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's r; None for fewer than 2 points or a constant side (r is undefined)."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def kendall_tau(x: Sequence[float], y: Sequence[float], block: int = 512) -> float | None:
    """Kendall's tau-b: (concordant − discordant) / √((n0 − ties in x)(n0 − ties in y)) over all pairs; None for
    fewer than 2 points or a constant side."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(a)
    if n > MAX_KENDALL_POINTS:
        raise ValueError(f"{n:,} points for Kendall's tau: the limit is {MAX_KENDALL_POINTS:,}")
    if n < 2:
        return None
    s = tx = ty = 0
    for start in range(0, n, block):   # each pair once: rows of the block against every later point
        i = np.arange(start, min(start + block, n))[:, None]
        later = np.arange(n)[None, :] > i
        dx, dy = np.sign(a[i] - a[None, :]), np.sign(b[i] - b[None, :])
        s += int((dx * dy)[later].sum())
        tx += int(((dx != 0) & later).sum())
        ty += int(((dy != 0) & later).sum())
    return None if tx == 0 or ty == 0 else float(s / np.sqrt(float(tx) * float(ty)))


@dataclass(frozen=True)
class Correlation:
    human: str          # the human score's name ("esa", "mqm" (a penalty: lower is better), …)
    metric: str         # "chrf", "bleu", …
    level: str          # "segment" or "system"
    points: int
    pearson: float | None
    kendall: float | None


def correlations(segments: Sequence[tuple[str, str, float, float]],
                 systems: Sequence[tuple[str, str, float, float]]) -> list[Correlation]:
    """Per (human score, metric) and level: rows are (human score name, metric, human value, metric value), one
    per segment (item and system) and one per system."""
    out = []
    for level, rows in (("segment", segments), ("system", systems)):
        cells: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
        for human, metric, h, m in rows:
            cells[human, metric].append((h, m))
        for (human, metric), pairs in sorted(cells.items()):
            hs, ms = [p[0] for p in pairs], [p[1] for p in pairs]
            tau = kendall_tau(hs, ms) if len(pairs) <= MAX_KENDALL_POINTS else None   # beyond: r alone
            out.append(Correlation(human, metric, level, len(pairs), pearson(hs, ms), tau))
    return out
