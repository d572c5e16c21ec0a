"""Scoring a file of outputs: `python -m app score --metric chrf,bleu,metricx --input rows.jsonl --output s.jsonl`.

Rows hold the `hypothesis` (or `output` / `candidate`), the `reference` (needed by BLEU, chrF++, TER, ROUGE and
reference-based MetricX) and the `source` (or `text` / `input`: MetricX reads it). Surface metrics come from
`app.metrics` (sacrebleu, rouge-score); MetricX from `model.metricx` on our own mT5, scored in length-sorted
batches. The per-row scores go through the batch machinery (`model.batch.run_job`: resumable, shared across
`accelerate launch` processes); the corpus scores with 95% bootstrap intervals are printed at the end.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.metricx import iter_scores

from . import metrics
from .annotation.campaign_items import read_records
from .annotation.campaign_stats import bootstrap_mean

SURFACE = ("bleu", "chrf", "ter", "rouge")
METRICS = (*SURFACE, "metricx")
HYPOTHESIS_COLUMNS = ("hypothesis", "output", "candidate")
SOURCE_COLUMNS = ("source", "text", "input")


@dataclass(frozen=True)
class ScoreRow:
    hypothesis: str
    reference: str = ""
    source: str = ""


def parse_metrics(text: str) -> tuple[str, ...]:
    """"chrf,bleu" -> ("chrf", "bleu"); a ValueError naming the known metrics otherwise."""
    names = tuple(dict.fromkeys(n.strip().lower() for n in str(text).split(",") if n.strip()))
    unknown = [n for n in names if n not in METRICS]
    if not names or unknown:
        raise ValueError(f"unknown metric {', '.join(unknown) or repr(text)}: use one or more of {', '.join(METRICS)}"
                         " (comma-separated)")
    return names


def read_rows(path: str | Path, wanted: Sequence[str], qe: bool = False, max_rows: int = metrics.MAX_ROWS
              ) -> list[ScoreRow]:
    """The file's rows; a ValueError naming the problem: no hypothesis column, a metric that needs references
    on a file without them, MetricX without sources, too many rows."""
    path = Path(path)
    records = read_records(path)
    if not records:
        raise ValueError(f"{path.name} has no rows")
    if len(records) > max_rows:
        raise ValueError(f"{path.name} has {len(records):,} rows; the limit is {max_rows:,}: split the file")
    columns = {k.strip().lower() for _, rec in records for k in rec}
    hyp = next((c for c in HYPOTHESIS_COLUMNS if c in columns), None)
    src = next((c for c in SOURCE_COLUMNS if c in columns), None)
    if hyp is None:
        raise ValueError(f"{path.name} has no `hypothesis` column (or `output`, `candidate`): found "
                         f"{', '.join(sorted(columns)) or 'none'}")
    needs_ref = [m for m in wanted if m in SURFACE or (m == "metricx" and not qe)]
    if needs_ref and "reference" not in columns:
        raise ValueError(f"{', '.join(needs_ref)} need{'s' if len(needs_ref) == 1 else ''} a `reference` column, "
                         f"which {path.name} lacks" + (" (or give --qe for MetricX without references)"
                                                        if "metricx" in needs_ref else ""))
    if "metricx" in wanted and src is None:
        raise ValueError(f"metricx reads the source: {path.name} needs a `source` column (or `text`, `input`)")
    out = []
    for where, rec in records:
        rec = {k.strip().lower(): v for k, v in rec.items()}
        values = {}
        for key, col in (("hypothesis", hyp), ("reference", "reference" if "reference" in columns else None),
                         ("source", src)):
            value = rec.get(col, "") if col else ""
            value = "" if value is None else value
            if not isinstance(value, str):
                raise ValueError(f"{where}: `{col}` must be text")
            values[key] = value
        out.append(ScoreRow(**values))
    return out


def surface_scorer(rows: Sequence[ScoreRow], wanted: Sequence[str], lang: str | None) -> Callable[[int], dict]:
    """Row i's sentence scores of the surface metrics in `wanted`."""
    names = [m for m in wanted if m in SURFACE]

    def score(i: int) -> dict[str, float | None]:
        if not names:
            return {}
        return metrics.sentence_scores([rows[i].hypothesis], [rows[i].reference], lang, names)[0]
    return score


def metricx_scorer(model, tokenizer, rows: Sequence[ScoreRow], *, qe: bool, version: int, batch_size: int
                   ) -> Callable[[int], dict]:
    """Row i's MetricX score, computed with its length neighbours in one batch (rows are asked for longest
    first, as the batch machinery deals them, so a batch's other rows are the ones asked for next)."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].source) - len(rows[i].hypothesis)
                   - len(rows[i].reference))
    place = {i: k for k, i in enumerate(order)}
    cache: dict[int, tuple[float, bool]] = {}

    def score(i: int) -> dict[str, Any]:
        if not rows[i].hypothesis.strip():
            return {"error": "empty hypothesis: MetricX cannot score an empty output (drop the row)"}
        if i not in cache:
            batch = [j for j in order[place[i]: place[i] + batch_size]
                     if j not in cache and rows[j].hypothesis.strip()]
            asked = [{"source": rows[j].source, "hypothesis": rows[j].hypothesis,
                      "reference": None if qe else rows[j].reference} for j in batch]
            for j, got in zip(batch, iter_scores(model, tokenizer, asked, qe=qe, version=version,
                                                 batch_size=batch_size)):
                cache[j] = (got.score, got.truncated)
        value, cut = cache.pop(i)
        return {"metricx": value, **({"metricx_truncated": True} if cut else {})}
    return score


def corpus_summary(rows: Sequence[ScoreRow], records: Sequence[dict], wanted: Sequence[str], lang: str | None,
                   n_bootstrap: int = metrics.DEFAULT_BOOTSTRAP) -> list[str]:
    """One line per metric: the corpus score with its 95% bootstrap interval (MetricX: the mean of the rows)."""
    lines = []
    surface = [m for m in wanted if m in SURFACE]
    if surface:
        found = metrics.corpus_scores([r.hypothesis for r in rows], [r.reference for r in rows], lang, surface,
                                      n_bootstrap)
        lines += [f"{key}: {c['score']:.2f} [{c['low']:.2f}, {c['high']:.2f}] over {c['n']} rows"
                  for key, c in found.items()]
    if "metricx" in wanted:
        values = [rec["metricx"] for rec in records if isinstance(rec.get("metricx"), (int, float))]
        if values:
            mean, low, high = bootstrap_mean(values, resamples=n_bootstrap)
            lines.append(f"metricx: {mean:.3f} [{low:.3f}, {high:.3f}] over {len(values)} rows (lower is better)")
    return lines
