"""Automatic metrics of a compare job, beside its human judgements: a file with a `reference` column gets each
system's corpus chrF++ and BLEU (ROUGE for summaries) with 95% bootstrap intervals, the paired bootstrap test of
whether the two systems differ, per-row sentence scores, and the human win rates on the same job.

The scores come from `app.metrics` (sacrebleu and rouge-score); this module only gathers a job's rows. The language
that picks sacrebleu's tokenizer (Chinese, Japanese, Korean, Thai, …) is read from the references' script, since a
compare job's file does not name it.
"""
from __future__ import annotations

import html
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .. import metrics
from .campaign_stats import bootstrap_mean
from .comparisons import compare_rows, get_comparison, get_compare_job, row_input_text, set_metricx
from .store import AnnotationStore

SUMMARY_TASKS = ("summarization",)
# the script of most letters in the references -> the language code whose sacrebleu tokenizer fits it
SCRIPT_LANGUAGES = {"CJK": "zh", "HIRAGANA": "ja", "KATAKANA": "ja", "HANGUL": "ko", "THAI": "th", "LAO": "lo",
                    "KHMER": "km", "MYANMAR": "my", "TIBETAN": "bo"}


def metric_names(task: str) -> tuple[str, ...]:
    return ("chrf", "bleu", "rouge") if task in SUMMARY_TASKS else ("chrf", "bleu")


def guess_language(texts: list[str], sample_chars: int = 20_000) -> str | None:
    """The language code whose BLEU tokenizer suits the texts' script (Japanese when kana appear at all beside
    Han characters), or None (sacrebleu's 13a, for space-separated scripts)."""
    scripts: Counter[str] = Counter()
    for text in texts:
        for ch in text[:sample_chars]:
            if ch.isalpha():
                scripts[unicodedata.name(ch, "").split(" ")[0]] += 1
        if sum(scripts.values()) >= sample_chars:
            break
    if not scripts:
        return None
    if scripts["HIRAGANA"] + scripts["KATAKANA"] > 0.05 * sum(scripts.values()):
        return "ja"
    return SCRIPT_LANGUAGES.get(scripts.most_common(1)[0][0])


@dataclass(frozen=True)
class JobMetrics:
    job_id: str
    task: str
    systems: tuple[str, str]                   # how the page names system 1 and 2
    rows: int                                  # the job's rows
    scored: int                                # rows processed by both systems with a reference
    lang: str | None
    corpus: tuple[dict[str, dict], dict[str, dict]] = ({}, {})   # per system: app.metrics.corpus_scores
    paired: dict[str, dict] = field(default_factory=dict)        # app.metrics.paired_comparison (b = system 2)
    sentences: list[dict[str, Any]] = field(default_factory=list)  # {index, <key>_1, <key>_2} per scored row
    human: dict[str, int] = field(default_factory=dict)          # judged, system_1, system_2, tie, both_bad


def system_name(settings: dict[str, Any]) -> str:
    decoding = ", ".join(f"{k}={v}" for k, v in sorted((settings.get("decoding") or {}).items()))
    return str(settings.get("model_id", "?")) + (f" ({decoding})" if decoding else "")


def human_preferences(store: AnnotationStore, rows) -> dict[str, int]:
    """The blind judgements of the job's rows, counted per system (A/B mapped back through each row's draw)."""
    out = Counter(judged=0, system_1=0, system_2=0, tie=0, both_bad=0)
    for row in rows:
        c = get_comparison(store, row.comparison_id) if row.comparison_id else None
        if c is None:
            continue
        out["judged"] += 1
        if c.preference in ("A", "B"):
            first_shown_is_2 = row.flipped
            out["system_2" if (c.preference == "A") == first_shown_is_2 else "system_1"] += 1
        else:
            out["tie" if c.preference == "tie" else "both_bad"] += 1
    return dict(out)


def compare_job_metrics(store: AnnotationStore, job_id: str, n_bootstrap: int = metrics.DEFAULT_BOOTSTRAP,
                        seed: int = metrics.DEFAULT_SEED) -> JobMetrics:
    """The job's metrics over its rows that both systems processed and that have a reference (none: empty)."""
    job = get_compare_job(store, job_id)
    rows = compare_rows(store, job_id)
    names = (system_name(job.systems[0]), system_name(job.systems[1]))
    scored = [r for r in rows if r.processed and r.reference.strip()]
    human = human_preferences(store, rows)
    learned = metricx_results([r for r in rows if r.processed and r.metricx_1 is not None
                               and r.metricx_2 is not None], n_bootstrap, seed)
    if not scored:
        return JobMetrics(job_id, job.task, names, len(rows), 0, None, learned[0], learned[1], human=human)
    refs = [r.reference for r in scored]
    one, two = [r.output_1 or "" for r in scored], [r.output_2 or "" for r in scored]
    lang = guess_language(refs)
    wanted = metric_names(job.task)
    corpus = (metrics.corpus_scores(one, refs, lang, wanted, n_bootstrap, seed),
              metrics.corpus_scores(two, refs, lang, wanted, n_bootstrap, seed))
    paired = metrics.paired_comparison(one, two, refs, lang, wanted, n_bootstrap, seed)
    per_row = zip(scored, metrics.sentence_scores(one, refs, lang, wanted),
                  metrics.sentence_scores(two, refs, lang, wanted))
    sentences = [{"index": r.index, **{f"{k}_1": v for k, v in s1.items()}, **{f"{k}_2": v for k, v in s2.items()}}
                 for r, s1, s2 in per_row]
    corpus = ({**corpus[0], **learned[0][0]}, {**corpus[1], **learned[0][1]})
    return JobMetrics(job_id, job.task, names, len(rows), len(scored), lang, corpus, {**paired, **learned[1]},
                      sentences, human)


def metricx_results(rows, n_bootstrap: int, seed: int) -> tuple[tuple[dict, dict], dict]:
    """((system 1's, system 2's) {"metricx": {score (the mean), low, high, n}}, {"metricx": paired test}) over the
    rows MetricX scored for both systems; empty dicts without any."""
    if not rows:
        return ({}, {}), {}
    sides = []
    for values in ([r.metricx_1 for r in rows], [r.metricx_2 for r in rows]):
        mean, low, high = bootstrap_mean(values, resamples=n_bootstrap, seed=seed)
        sides.append({"metricx": {"score": mean, "low": low, "high": high, "n": len(values)}})
    paired = metrics.paired_means([r.metricx_1 for r in rows], [r.metricx_2 for r in rows], n_bootstrap, seed)
    return (sides[0], sides[1]), {"metricx": paired}


def score_metricx(store: AnnotationStore, job_id: str, service, progress=None) -> int:
    """Scores with the deployment's MetricX (app.scoring.MetricXService) both systems' outputs of the job's
    processed rows that have no MetricX score yet, and stores them; returns how many rows were scored. Against the
    references when every such row has one, else reference-free (QE) for all: one job, one mode."""
    rows = [r for r in compare_rows(store, job_id) if r.processed and r.metricx_1 is None]
    if not rows:
        return 0
    qe = not all(r.reference.strip() for r in rows)
    asked = [{"source": row_input_text(r), "hypothesis": out, "reference": r.reference}
             for outputs in ([r.output_1 for r in rows], [r.output_2 for r in rows]) for r, out in zip(rows, outputs)]
    got = service.scores(asked, qe=qe, progress=progress)
    one, two = got[:len(rows)], got[len(rows):]
    done = [(r.index, a, b) for r, a, b in zip(rows, one, two) if a is not None and b is not None]
    set_metricx(store, job_id, done)
    return len(done)


LABELS = {"chrf": "chrF++", "bleu": "BLEU", "ter": "TER", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2",
          "rougeL": "ROUGE-L", "metricx": "MetricX (lower is better)"}


def render(m: JobMetrics) -> str:
    """The job's metrics as an HTML table: score [95% interval] per system, the difference and its p-value, and
    the human preferences under it."""
    esc = html.escape
    h = m.human
    people = (f"Blind human judgements: {h.get('judged', 0)} of {m.rows} rows judged — system 1 preferred "
              f"{h.get('system_1', 0)}, system 2 {h.get('system_2', 0)}, tie {h.get('tie', 0)}, both bad "
              f"{h.get('both_bad', 0)}.")
    if not m.paired:
        why = ("no row has a reference (add a `reference` column to the file)" if m.rows else "the job has no rows")
        return (f'<div class="job-metrics"><p>No automatic metrics: {why}, or no row is processed by both '
                f"systems yet.</p><p>{esc(people)}</p></div>")
    head = (f"<tr><th>metric</th><th>1: {esc(m.systems[0])}</th><th>2: {esc(m.systems[1])}</th>"
            "<th>2 − 1</th><th>p (paired bootstrap)</th></tr>")
    body = []
    for key, pair in m.paired.items():
        cells = [f"{s[key]['score']:.1f} [{s[key]['low']:.1f}–{s[key]['high']:.1f}]" for s in m.corpus]
        verdict = "differ" if pair["significant"] else "no significant difference"
        body.append(f"<tr><td>{LABELS.get(key, key)}</td><td>{cells[0]}</td><td>{cells[1]}</td>"
                    f"<td>{pair['delta']:+.1f}</td><td>{pair['p_value']:.3f} ({verdict})</td></tr>")
    lang = f"references read as {m.lang}" if m.lang else "space-separated references (13a tokens)"
    against = (f"{m.scored} of {m.rows} rows scored against their reference ({lang})" if m.scored
               else "no references: MetricX alone, reference-free")
    learned = (f"; MetricX on {m.paired['metricx']['n']} rows (0 best, 25 worst)" if "metricx" in m.paired else "")
    return (f'<div class="job-metrics"><p>{against}{learned}; 95% bootstrap intervals.</p>'
            f"<table>{head}{''.join(body)}</table><p>{esc(people)}</p></div>")
