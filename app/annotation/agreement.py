"""Inter-annotator agreement on ratings (Krippendorff's alpha, per task and per model), and for side-by-side
comparisons: win rates per system pair with 95% Wilson intervals, and agreement on preferences.

Alpha = 1 − D_o / D_e: observed disagreement between ratings of the same item over the disagreement expected
by chance. It allows any number of annotators per item and missing ratings, and has metrics for nominal,
ordinal and interval data (Krippendorff, "Computing Krippendorff's Alpha-Reliability", 2011). 1 is perfect
agreement, 0 is chance; below 0.667 the ratings are usually not trusted for conclusions.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from .comparisons import Comparison, System
from .store import Annotation

METRICS = ("nominal", "ordinal", "interval", "ratio")


def coincidences(units: Iterable[Sequence[float | None]]) -> dict[tuple[float, float], float]:
    """The coincidence matrix o[c, k]: every ordered pair of values within a unit, weighted 1/(m_u − 1) for a
    unit with m_u values, so each unit contributes m_u in total. Units with fewer than two values are left out."""
    o: dict[tuple[float, float], float] = defaultdict(float)
    for unit in units:
        values = Counter(v for v in unit if v is not None)
        m = sum(values.values())
        if m < 2:
            continue
        for c, nc in values.items():
            for k, nk in values.items():
                pairs = nc * (nk - (c == k))
                if pairs:
                    o[c, k] += pairs / (m - 1)
    return dict(o)


def krippendorff_alpha(units: Iterable[Sequence[float | None]], metric: str = "interval") -> float | None:
    """Krippendorff's alpha of `units`: one sequence of values per unit (item), one per coder, None for a
    missing value. Returns None where alpha is undefined: fewer than two pairable values, or no variation
    at all (every value equal, so chance disagreement is zero)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    o = coincidences(units)
    n_c: dict[float, float] = defaultdict(float)
    for (c, _), w in o.items():
        n_c[c] += w
    n = sum(n_c.values())
    if n < 2:
        return None
    delta = _delta(metric, n_c)
    observed = sum(w * delta(c, k) for (c, k), w in o.items())
    expected = sum(n_c[c] * n_c[k] * delta(c, k) for c in n_c for k in n_c)
    if expected == 0:
        return None
    return 1.0 - (n - 1) * observed / expected


def _delta(metric: str, n_c: dict[float, float]):
    """Squared difference function δ²(c, k) of the metric."""
    if metric == "nominal":
        return lambda c, k: float(c != k)
    if metric == "interval":
        return lambda c, k: float(c - k) ** 2
    if metric == "ratio":
        return lambda c, k: ((c - k) / (c + k)) ** 2 if c + k else 0.0
    # ordinal: the distance between two ranks is how many values lie between them, half-counting the ends.
    ranks = sorted(n_c)
    cum = {}
    total = 0.0
    for v in ranks:
        cum[v] = total          # values below v
        total += n_c[v]

    def ordinal(c, k):
        lo, hi = min(c, k), max(c, k)
        between = cum[hi] + n_c[hi] - cum[lo]    # n_lo + … + n_hi
        return (between - (n_c[lo] + n_c[hi]) / 2) ** 2
    return ordinal


# ---------------------------------------------------------------------------------------------------------------
# On annotations


@dataclass(frozen=True)
class AgreementRow:
    """Agreement within one group (a task, a model, or everything).

    items: items rated by two or more annotators; annotators: distinct annotators among them; ratings: the
    ratings that entered alpha. An alpha is None where it is undefined (see `note`)."""
    group: str
    items: int
    annotators: int
    ratings: int
    alpha_ordinal: float | None
    alpha_interval: float | None
    alpha_nominal: float | None
    note: str = ""


def rating_units(records: Iterable[Annotation]) -> dict[str, dict[str, int]]:
    """Ratings by item then annotator: {item_key: {annotator: rating}}. An annotator who rated an item twice
    counts once, with the latest edit; unrated annotations are left out."""
    latest: dict[tuple[str, str], Annotation] = {}
    for a in records:
        if a.rating is None:
            continue
        key = (a.item_key, a.annotator)
        if key not in latest or a.updated_at > latest[key].updated_at:
            latest[key] = a
    units: dict[str, dict[str, int]] = defaultdict(dict)
    for (item, who), a in latest.items():
        units[item][who] = a.rating
    return dict(units)


def agreement(records: Sequence[Annotation], by: str = "task", include_all: bool = True) -> list[AgreementRow]:
    """Krippendorff's alpha on ratings per group: `by` is "task" or "model_id" (or "all" alone). Only items
    rated by two or more annotators count. With `include_all`, a last row "all" pools every group."""
    if by not in ("task", "model_id", "all"):
        raise ValueError(f"agreement can be grouped by task, model_id or all, not {by!r}")
    groups: dict[str, list[Annotation]] = defaultdict(list)
    if by != "all":
        for a in records:
            groups[getattr(a, by)].append(a)
    rows = [_row(name, groups[name]) for name in sorted(groups)]
    if include_all or by == "all":
        rows.append(_row("all", records))
    return rows


def _row(group: str, records: Iterable[Annotation]) -> AgreementRow:
    units = {item: r for item, r in rating_units(records).items() if len(r) >= 2}
    values = [list(r.values()) for r in units.values()]
    alphas = {m: krippendorff_alpha(values, m) for m in ("ordinal", "interval", "nominal")}
    note = ""
    if not units:
        note = "no item rated by two or more annotators yet"
    elif alphas["interval"] is None:
        note = "every rating is the same: alpha is undefined without variation"
    annotators = {who for r in units.values() for who in r}
    return AgreementRow(group, len(units), len(annotators), sum(len(v) for v in values),
                        alphas["ordinal"], alphas["interval"], alphas["nominal"], note)


def agreement_frame(records: Sequence[Annotation], by: str = "task", include_all: bool = True) -> pd.DataFrame:
    """`agreement(...)` as a DataFrame for a table, alphas rounded to 3 places."""
    df = pd.DataFrame([r.__dict__ for r in agreement(records, by, include_all)],
                      columns=list(AgreementRow.__dataclass_fields__))
    for col in ("alpha_ordinal", "alpha_interval", "alpha_nominal"):
        df[col] = df[col].map(lambda v: None if v is None else round(v, 3))
    return df


# ---------------------------------------------------------------------------------------------------------------
# On comparisons
#
# Win rate of system X over system Y: X's wins over the decisive judgements (X better or Y better); ties and
# "both bad" are not counted as half a win, they are reported as their own shares, so a pair judged mostly "both
# bad" does not look like an even match. The 95% interval is Wilson's score interval on the decisive judgements
# (it stays inside 0–1 and behaves with few judgements, unlike the normal approximation). Every judgement counts,
# several annotators of one item included; agreement is measured separately.

Z95 = 1.959963984540054   # the standard normal's 97.5% quantile


def wilson_interval(successes: float, n: float, z: float = Z95) -> tuple[float, float] | None:
    """Wilson's score interval for a binomial proportion `successes / n` (95% by default); None for n = 0."""
    if n <= 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def system_label(system: System, other: System) -> str:
    """A short name for one system of a pair: the checkpoint's name, and what differs from the other system."""
    name = system.model_id.rstrip("/").rsplit("/", 1)[-1]
    extra = []
    if system.model_id == other.model_id:
        if system.model_revision != other.model_revision:
            extra.append(f"@{system.model_revision or 'main'}")
        if system.dtype != other.dtype:
            extra.append(system.dtype or "auto")
        keys = sorted(set(system.decoding) | set(other.decoding))
        extra += [f"{k}={system.decoding[k]}" for k in keys
                  if k in system.decoding and system.decoding[k] != other.decoding.get(k)]
    return name + (f" ({', '.join(extra)})" if extra else "")


@dataclass(frozen=True)
class WinRateRow:
    """One pair of systems: X and Y in a fixed order (by their keys). Rates are over decisive judgements."""
    task: str
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


def _pair(c: Comparison) -> tuple[System, System]:
    return tuple(sorted((c.system_a, c.system_b), key=lambda s: s.key))


def win_rates(records: Iterable[Comparison]) -> list[WinRateRow]:
    """Win rates per (task, system pair), with the 95% Wilson interval of X's rate over decisive judgements."""
    groups: dict[tuple[str, str, str], list[Comparison]] = defaultdict(list)
    systems: dict[tuple[str, str, str], tuple[System, System]] = {}
    for c in records:
        x, y = _pair(c)
        key = (c.task, x.key, y.key)
        groups[key].append(c)
        systems[key] = (x, y)
    rows = []
    for key in sorted(groups):
        x, y = systems[key]
        counts = Counter("x" if (w := c.winner()) is not None and w.key == x.key else
                         "y" if w is not None else c.preference for c in groups[key])
        decisive = counts["x"] + counts["y"]
        ci = wilson_interval(counts["x"], decisive)
        rows.append(WinRateRow(key[0], system_label(x, y), system_label(y, x), len(groups[key]), counts["x"],
                               counts["y"], counts["tie"], counts["both_bad"],
                               counts["x"] / decisive if decisive else None, *(ci or (None, None))))
    return rows


def win_rate_frame(records: Iterable[Comparison]) -> pd.DataFrame:
    """`win_rates` as a table: X's win rate and its 95% Wilson interval as percentages."""
    cols = ["task", "system X", "system Y", "judgements", "X wins", "Y wins", "ties", "both bad",
            "X win rate % (decisive)", "95% Wilson CI %"]
    out = []
    for r in win_rates(records):
        rate = "—" if r.x_win_rate is None else f"{100 * r.x_win_rate:.1f}"
        ci = "—" if r.ci_low is None else f"{100 * r.ci_low:.1f}–{100 * r.ci_high:.1f}"
        out.append([r.task, r.system_x, r.system_y, r.judgements, r.x_wins, r.y_wins, r.ties, r.both_bad, rate, ci])
    return pd.DataFrame(out, columns=cols)


def preference_value(c: Comparison) -> str:
    """The preference in terms of the systems, not the order shown: the winner's key, or "tie" / "both_bad"."""
    w = c.winner()
    return w.key if w is not None else c.preference


def preference_units(records: Iterable[Comparison]) -> dict[str, dict[str, str]]:
    """Preferences by item then annotator (the latest edit of an annotator who judged an item twice)."""
    latest: dict[tuple[str, str], Comparison] = {}
    for c in records:
        k = (c.item_key, c.annotator)
        if k not in latest or c.updated_at > latest[k].updated_at:
            latest[k] = c
    units: dict[str, dict[str, str]] = defaultdict(dict)
    for (item, who), c in latest.items():
        units[item][who] = preference_value(c)
    return dict(units)


@dataclass(frozen=True)
class PreferenceAgreement:
    items: int              # items judged by two or more annotators
    annotators: int
    judgements: int
    alpha_nominal: float | None
    note: str = ""


def preference_agreement(records: Sequence[Comparison]) -> PreferenceAgreement:
    """Krippendorff's alpha (nominal: X better, Y better, tie, both bad) over items judged by 2+ annotators."""
    units = {k: u for k, u in preference_units(records).items() if len(u) >= 2}
    values = [list(u.values()) for u in units.values()]
    alpha = krippendorff_alpha(values, "nominal")
    note = "no item judged by two or more annotators yet" if not units else \
        "every preference is the same: alpha is undefined without variation" if alpha is None else ""
    return PreferenceAgreement(len(units), len({w for u in units.values() for w in u}), sum(map(len, values)),
                               alpha, note)
