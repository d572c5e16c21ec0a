"""Scoring a file of outputs: `python -m app score --metric chrf,bleu,metricx --input rows.jsonl --output s.jsonl`.

Rows hold the `hypothesis` (or `output` / `candidate`), the `reference` (needed by BLEU, chrF++, TER, ROUGE and
reference-based MetricX) and the `source` (or `text` / `input`: MetricX reads it). Surface metrics come from
`app.metrics` (sacrebleu, rouge-score); MetricX from `model.metricx` on our own mT5, scored in length-sorted
batches. The per-row scores go through the batch machinery (`model.batch.run_job`: resumable, shared across
`accelerate launch` processes); the corpus scores with 95% bootstrap intervals are printed at the end.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model import MT5Config, MT5Tokenizer
from model.metricx import MT5ForRegression, iter_scores

from . import metrics
from .annotation.campaign_items import read_records
from .annotation.campaign_stats import bootstrap_mean
from .errors import UserError
from .models import QUANTIZATIONS

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


METRICX_QUANTIZATIONS = ("none", "int8", "int8-all", "int4", "int4-all")


def load_metricx(source: str, tokenizer: str, dtype: str = "auto", quantization: str = "none",
                 offline: bool = False):
    """(MetricX model, its tokenizer); a UserError naming what is wrong: a checkpoint whose config is not
    MT5ForRegression (read first: nothing large is downloaded for it), files that cannot be read."""
    if quantization not in METRICX_QUANTIZATIONS:
        raise UserError(f"MetricX quantization {quantization!r}: use one of {', '.join(METRICX_QUANTIZATIONS)}")
    options: dict[str, Any] = {} if dtype == "auto" else {"dtype": dtype}
    options.update(QUANTIZATIONS[quantization][1])
    hub = {"local_files_only": True} if offline else {}
    try:
        config = MT5Config.from_pretrained(source, **hub)
        if "MT5ForRegression" not in (config.architectures or []):
            raise ValueError(f"its config says architectures={config.architectures}, not MT5ForRegression: it is "
                             "not a MetricX checkpoint (google/metricx-24-hybrid-large-v2p6 is one)")
        metric = MT5ForRegression.from_pretrained(source, **options, **hub)
        tok = MT5Tokenizer.from_pretrained(tokenizer, **hub)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cannot load MetricX from {source!r} (tokenizer {tokenizer!r}): {e}") from None
    return metric.eval(), tok


class MetricXService:
    """The deployment's MetricX (Settings.metricx), loaded on first use, once, under a lock; scores rows of
    {"source", "hypothesis", "reference"}, an empty hypothesis scoring None."""

    def __init__(self, source: str, tokenizer: str, quantization: str = "int8", offline: bool = False):
        self.source, self.tokenizer, self.quantization, self.offline = source, tokenizer, quantization, offline
        self._loaded = None
        self._lock = threading.Lock()

    def scores(self, rows: Sequence[dict], qe: bool, batch_size: int = 16,
               progress: Callable[[int, int], None] | None = None) -> list[float | None]:
        with self._lock:
            if self._loaded is None:
                self._loaded = load_metricx(self.source, self.tokenizer, "auto", self.quantization, self.offline)
            model, tok = self._loaded
            keep = [i for i, r in enumerate(rows) if str(r.get("hypothesis") or "").strip()]
            out: list[float | None] = [None] * len(rows)
            asked = [{**rows[i], "reference": None if qe else rows[i].get("reference")} for i in keep]
            for n, got in enumerate(iter_scores(model, tok, asked, qe=qe, batch_size=batch_size)):
                out[keep[got.index]] = got.score
                if progress is not None and (n + 1) % batch_size == 0:
                    progress(n + 1, len(keep))
            return out
