"""Inter-annotator agreement on ratings: Krippendorff's alpha, per task and per model.

Alpha = 1 − D_o / D_e: observed disagreement between ratings of the same item over the disagreement expected
by chance. It allows any number of annotators per item and missing ratings, and has metrics for nominal,
ordinal and interval data (Krippendorff, "Computing Krippendorff's Alpha-Reliability", 2011). 1 is perfect
agreement, 0 is chance; below 0.667 the ratings are usually not trusted for conclusions.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

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
