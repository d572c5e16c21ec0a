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
