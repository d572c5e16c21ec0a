"""Surface metrics of outputs against references: BLEU, chrF++ and TER from sacrebleu, ROUGE-1/2/L from
rouge-score. Per row (`sentence_scores`), per system with 95% bootstrap intervals (`corpus_scores`), and two
systems on the same rows with a paired bootstrap test (`paired_comparison`). No Gradio, no torch: the batch and
compare jobs, the campaign results and the CLI call these plain functions.

Every score is on sacrebleu's 0–100 scale (ROUGE F1 × 100); higher is better except TER (`LOWER_IS_BETTER`).

Tokenization, by the target language's ISO 639-1 code ("zh-Hant", "ja_JP" are read by their first part; a
language name such as "Chinese" is not a code and gets the defaults):
- BLEU (`bleu_tokenizer`): sacrebleu's `zh` for Chinese, `ja-mecab` for Japanese and `ko-mecab` for Korean
  (sacrebleu's own tokenizers for them; the MeCab ones need `sacrebleu[ja,ko]`, which requirements.txt installs
  from PyPI: MeCab as binary wheels, its dictionaries as data packages, ~160 MB, no compiler); `char` for Thai,
  Lao, Khmer, Myanmar and Tibetan (written without spaces between words, and sacrebleu has no word tokenizer for
  them); `13a` otherwise, and for no language.
- chrF++ is chrF with word bigrams (`word_order=2`); its character n-grams need no tokenizer, so it is the
  metric to trust on unspaced scripts.
- TER splits Chinese characters and Japanese kanji (sacrebleu's `normalized=True, asian_support=True`) for zh
  and ja; elsewhere it compares space-separated words, so on Thai and the like it says little.
- ROUGE: for English, rouge-score's own tokenizer with the Porter stemmer (the setting English summarization
  papers report). For every other language `UnicodeWordTokenizer` and no stemming: rouge-score's own tokenizer
  keeps only [a-z0-9] and scores any non-Latin text 0. This stands in for XLSum's multilingual
  rouge (csebuetnlp/xl-sum `multilingual_rouge_scoring`, not on PyPI), without its per-language stemmers, so its
  numbers are close to, not equal to, XLSum's published ones.

Empty strings (None counts as empty): an empty hypothesis is a system's failure and is scored as the libraries
score it (BLEU, chrF and ROUGE 0, TER 100). An empty reference (or only whitespace) is missing data: that row's
sentence scores are None and the corpus scores and the paired test leave the row out (`n` says how many rows
counted); if no row has a reference, ValueError.

Intervals and tests resample rows of sacrebleu's own sufficient statistics (its `_extract_corpus_statistics`
and `_compute_score_from_stats`, which its significance module uses) with its resampling rule, so with seed
12345 (its default `SACREBLEU_SEED`) the interval half-width and the p-value equal `sacrebleu --confidence` and
`--paired-bs` (tests/test_metrics.py checks both). Two deliberate differences: the interval is the 2.5th and
97.5th percentile of the resampled scores (sacrebleu prints the mean ± the half-width of that same range), and
a resample whose difference ties the observed one counts against significance, so two identical systems get
p = 1 (sacrebleu's strict `>` gives them p ≈ 0.001, "significant").
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Callable, Sequence

import numpy as np
import regex
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF, TER

# Bounds on one call's cost. Sentence statistics cost O(rows × length) (TER's shift search more); the
# bootstrap costs O(n_bootstrap × rows) on top.
MAX_ROWS = 100_000
MAX_CHARS_PER_ROW = 5_000       # a hypothesis or reference longer than a page is not a segment
MIN_BOOTSTRAP = 100             # fewer resamples cannot place a 2.5th percentile (1/40 of them)
MAX_BOOTSTRAP = 10_000
DEFAULT_BOOTSTRAP = 1000
DEFAULT_SEED = 12345            # sacrebleu's default SACREBLEU_SEED, so results match its CLI
ALPHA = 0.05                    # significance level of the paired test
RESAMPLE_CELLS = 2_000_000      # resample rows × data rows held at once while bootstrapping (~32 MB)

LOWER_IS_BETTER = frozenset({"ter"})

BLEU_TOKENIZERS = {"zh": "zh", "ja": "ja-mecab", "ko": "ko-mecab",
                   "th": "char", "lo": "char", "km": "char", "my": "char", "bo": "char"}
TER_CHARACTER_LEVEL = frozenset({"zh", "ja"})


def language(lang: str | None) -> str | None:
    """The primary language subtag, lowercased: "zh-Hant" -> "zh"; None or "" -> None."""
    if not lang or not lang.strip():
        return None
    return re.split(r"[-_]", lang.strip().lower())[0]


def bleu_tokenizer(lang: str | None) -> str:
    """sacrebleu's tokenizer name for BLEU on text in `lang` (see the module docstring)."""
    return BLEU_TOKENIZERS.get(language(lang) or "", "13a")


class UnicodeWordTokenizer:
    """ROUGE tokens for any script (rouge-score's `tokenizer=`): lowercased; words are runs of letters, marks and
    digits (so Devanagari vowel signs stay in their word, unlike Python's `\\w`); each character (with its
    combining marks) of a script written without spaces (Han, kana, Thai, Lao, Khmer, Myanmar, Tibetan: the
    scripts of `app.tasks.UNSPACED_SCRIPTS`) is a word of its own; punctuation and symbols are dropped."""
    UNSPACED = regex.compile(r"(?!\p{M})[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}"
                             r"\p{Tibetan}]\p{M}*")
    WORD = regex.compile(r"[\p{L}\p{M}\p{N}]+")

    def tokenize(self, text: str) -> list[str]:
        return self.WORD.findall(self.UNSPACED.sub(r" \g<0> ", text.lower()))


@dataclass(frozen=True)
class _Metric:
    """One user-facing metric: per-row sufficient statistics (N, d) whose column sums give the corpus score, so
    a bootstrap resample is a weighted sum of rows. `keys` are the scores it reports (ROUGE reports three)."""
    keys: tuple[str, ...]
    row_stats: Callable[[list[str], list[str]], np.ndarray]    # (hyps, refs) -> (N, d)
    corpus: Callable[[np.ndarray], dict[str, float]]           # column sums (d,) -> {key: score}
    sentence: Callable[[np.ndarray], dict[str, float]]         # one row (d,) -> {key: score}
    signature: Callable[[], str]                               # once row_stats has run (it counts references)


def _sacrebleu_metric(key: str, corpus_metric, sentence_metric) -> _Metric:
    def row_stats(hyps: list[str], refs: list[str]) -> np.ndarray:
        return np.array(corpus_metric._extract_corpus_statistics(hyps, [refs]), dtype=np.float64)

    return _Metric(
        keys=(key,), row_stats=row_stats,
        corpus=lambda s: {key: float(corpus_metric._compute_score_from_stats(s).score)},
        sentence=lambda s: {key: float(sentence_metric._compute_score_from_stats(s).score)},
        signature=lambda: str(corpus_metric.get_signature()))


ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


def _rouge(lang: str | None) -> _Metric:
    english = language(lang) == "en"
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=english,
                                      tokenizer=None if english else UnicodeWordTokenizer())

    def row_stats(hyps: list[str], refs: list[str]) -> np.ndarray:
        rows = []
        for hyp, ref in zip(hyps, refs):
            s = scorer.score(ref, hyp)   # rouge-score's order: (target, prediction)
            rows.append([100 * s[k].fmeasure for k in ROUGE_KEYS] + [1.0])
        return np.array(rows, dtype=np.float64).reshape(len(hyps), len(ROUGE_KEYS) + 1)

    def mean(s: np.ndarray) -> dict[str, float]:   # the last column counts rows: corpus ROUGE = mean F1
        return {k: float(s[i] / s[-1]) for i, k in enumerate(ROUGE_KEYS)}

    tok = "rouge-score+porter" if english else "unicode-words+unspaced-chars"
    signature = f"rouge-score:{version('rouge-score')}|tok:{tok}|stem:{'yes' if english else 'no'}"
    return _Metric(keys=ROUGE_KEYS, row_stats=row_stats, corpus=mean, sentence=mean, signature=lambda: signature)


def _bleu(lang: str | None) -> _Metric:
    tok = bleu_tokenizer(lang)
    # effective order for single sentences, as sacrebleu.sentence_bleu: a short row would otherwise be 0
    return _sacrebleu_metric("bleu", BLEU(tokenize=tok), BLEU(tokenize=tok, effective_order=True))


def _chrf(lang: str | None) -> _Metric:
    chrf = CHRF(word_order=2)
    return _sacrebleu_metric("chrf", chrf, chrf)


def _ter(lang: str | None) -> _Metric:
    cjk = language(lang) in TER_CHARACTER_LEVEL
    ter = TER(normalized=cjk, asian_support=cjk)
    return _sacrebleu_metric("ter", ter, ter)


# The metrics by the name callers ask for: a new one is a builder and a row here.
BUILDERS: dict[str, Callable[[str | None], _Metric]] = {"bleu": _bleu, "chrf": _chrf, "ter": _ter, "rouge": _rouge}
METRICS = tuple(BUILDERS)


def _metrics(names: Sequence[str], lang: str | None) -> dict[str, _Metric]:
    """Fresh metric objects for one call (sacrebleu's keep per-call state, so none is shared between threads)."""
    if isinstance(names, str):
        names = (names,)
    unknown = [n for n in names if n not in BUILDERS]
    if unknown or not names:
        raise ValueError(f"unknown metric {', '.join(map(repr, unknown)) or '(none given)'}: "
                         f"choose from {', '.join(METRICS)}")
    return {n: BUILDERS[n](lang) for n in dict.fromkeys(names)}


def _texts(column: Sequence[str | None], what: str) -> list[str]:
    """`column` as a list of str (None -> ""), refusing other values and over-long rows."""
    out = []
    for i, text in enumerate(column):
        text = "" if text is None else text
        if not isinstance(text, str):
            raise ValueError(f"row {i + 1}: the {what} is a {type(text).__name__}, not text")
        if len(text) > MAX_CHARS_PER_ROW:
            raise ValueError(f"row {i + 1}: the {what} has {len(text):,} characters, above the limit of "
                             f"{MAX_CHARS_PER_ROW:,} per row (metrics.MAX_CHARS_PER_ROW): shorten or split it")
        out.append(text)
    return out


def _checked(refs, **systems) -> tuple[list[str], dict[str, list[str]]]:
    """The references and each system's hypotheses as lists of text, all the same non-zero length."""
    refs = _texts(refs, "reference")
    if not refs:
        raise ValueError("no rows to score: give at least one hypothesis and reference")
    if len(refs) > MAX_ROWS:
        raise ValueError(f"{len(refs):,} rows is above the limit of {MAX_ROWS:,} (metrics.MAX_ROWS): "
                         "score the file in parts")
    out = {}
    for name, hyps in systems.items():
        hyps = _texts(hyps, f"hypothesis ({name})" if len(systems) > 1 else "hypothesis")
        if len(hyps) != len(refs):
            raise ValueError(f"{len(hyps):,} hypotheses ({name}) for {len(refs):,} references: "
                             "every row needs one of each")
        out[name] = hyps
    return refs, out


def _with_reference(what: str, refs: list[str], systems: dict[str, list[str]]):
    """The rows whose reference is not empty (the others are missing data), or ValueError if none is."""
    keep = [bool(r.strip()) for r in refs]
    if not any(keep):
        raise ValueError(f"no row has a reference: {what} need references")

    def pick(column: list[str]) -> list[str]:
        return [x for x, k in zip(column, keep) if k]
    return pick(refs), {name: pick(hyps) for name, hyps in systems.items()}


def sentence_scores(hyps: Sequence[str | None], refs: Sequence[str | None], lang: str | None = None,
                    metrics: Sequence[str] = ("bleu", "chrf", "ter")) -> list[dict[str, float | None]]:
    """Scores of each row: one dict per row, {"bleu": 27.3, "chrf": 51.0, "ter": 60.0} (ROUGE adds "rouge1",
    "rouge2", "rougeL"), each 0–100; None for every metric on a row with an empty reference. BLEU is sentence
    BLEU (exp smoothing, effective order, as `sacrebleu.sentence_bleu`). ValueError on bad input (module
    docstring)."""
    refs, systems = _checked(refs, hypothesis=hyps)
    hyps = systems["hypothesis"]
    built = _metrics(metrics, lang)
    rows: list[dict[str, float | None]] = [{} for _ in refs]
    for metric in built.values():
        stats = metric.row_stats(hyps, refs)
        for row, s, ref in zip(rows, stats, refs):
            row.update(metric.sentence(s) if ref.strip() else dict.fromkeys(metric.keys))
    return rows


def _resample_sums(stats: list[np.ndarray], n_bootstrap: int, seed: int | None):
    """Yields, for each bootstrap resample of the rows, each stats array's column sums over that resample. The
    rows are drawn as sacrebleu draws them (`default_rng(seed).choice(N, (n_bootstrap, N))`), in blocks of
    rows so memory stays at RESAMPLE_CELLS, and the same draws serve every array (a paired test)."""
    n = len(stats[0])
    rng = np.random.default_rng(seed)
    block = max(1, RESAMPLE_CELLS // n)
    for start in range(0, n_bootstrap, block):
        k = min(block, n_bootstrap - start)
        idx = rng.choice(n, size=(k, n), replace=True)
        counts = np.bincount((idx + n * np.arange(k)[:, None]).ravel(), minlength=k * n).reshape(k, n)
        counts = counts.astype(np.float64)
        yield from zip(*(counts @ s for s in stats))


def _check_bootstrap(n_bootstrap: int) -> None:
    if not MIN_BOOTSTRAP <= n_bootstrap <= MAX_BOOTSTRAP:
        raise ValueError(f"n_bootstrap={n_bootstrap}: give between {MIN_BOOTSTRAP} and {MAX_BOOTSTRAP:,} "
                         "resamples (1000 is usual)")


def _percentiles(values: list[float]) -> tuple[float, float]:
    """The 95% interval of bootstrap scores: the same order statistics as sacrebleu's `estimate_ci`."""
    values = sorted(values)
    low = len(values) // 40
    return values[low], values[len(values) - low - 1]


def corpus_scores(hyps: Sequence[str | None], refs: Sequence[str | None], lang: str | None = None,
                  metrics: Sequence[str] = ("bleu", "chrf", "ter"), n_bootstrap: int = DEFAULT_BOOTSTRAP,
                  seed: int | None = DEFAULT_SEED) -> dict[str, dict]:
    """One system's corpus scores with 95% bootstrap intervals: {key: {"score", "low", "high", "n",
    "signature"}} for the keys `sentence_scores` gives. score: corpus BLEU/chrF++/TER from summed sentence
    statistics (as `sacrebleu` on the whole file), ROUGE the mean of row F1; low/high: 2.5th and 97.5th
    percentiles over `n_bootstrap` resamples of the rows (same seed, same interval; seed=None draws afresh);
    n: rows with a reference; signature: sacrebleu's reproducibility signature (or ROUGE's settings)."""
    _check_bootstrap(n_bootstrap)
    refs, systems = _with_reference("corpus scores", *_checked(refs, hypothesis=hyps))
    hyps = systems["hypothesis"]
    built = _metrics(metrics, lang)
    stats = [m.row_stats(hyps, refs) for m in built.values()]
    samples: dict[str, list[float]] = {k: [] for m in built.values() for k in m.keys}
    for sums in _resample_sums(stats, n_bootstrap, seed):
        for metric, s in zip(built.values(), sums):
            for k, v in metric.corpus(s).items():
                samples[k].append(v)
    out = {}
    for metric, s in zip(built.values(), stats):
        for k, score in metric.corpus(s.sum(0)).items():
            low, high = _percentiles(samples[k])
            out[k] = {"score": score, "low": low, "high": high, "n": len(refs),
                      "signature": metric.signature()}
    return out


def paired_comparison(hyps_a: Sequence[str | None], hyps_b: Sequence[str | None], refs: Sequence[str | None],
                      lang: str | None = None, metrics: Sequence[str] = ("bleu", "chrf", "ter"),
                      n_bootstrap: int = DEFAULT_BOOTSTRAP, seed: int | None = DEFAULT_SEED) -> dict[str, dict]:
    """Whether systems A and B, on the same rows, differ: {key: {"a", "b", "delta", "p_value", "significant",
    "n"}}. a, b: corpus scores; delta = b − a (for TER a negative delta means B is better); p_value: paired
    bootstrap resampling (Koehn 2004, as sacrebleu's `--paired-bs`: both systems scored on the same resampled
    rows, p = share of resamples whose centred |difference| reaches the observed one, with +1 smoothing);
    significant: p_value < ALPHA. Rows without a reference are left out of both."""
    _check_bootstrap(n_bootstrap)
    refs, systems = _with_reference("paired comparisons", *_checked(refs, a=hyps_a, b=hyps_b))
    a_hyps, b_hyps = systems["a"], systems["b"]
    built = _metrics(metrics, lang)
    stats = [s for m in built.values() for s in (m.row_stats(a_hyps, refs), m.row_stats(b_hyps, refs))]
    diffs: dict[str, list[float]] = {k: [] for m in built.values() for k in m.keys}
    for sums in _resample_sums(stats, n_bootstrap, seed):
        for i, metric in enumerate(built.values()):
            a, b = metric.corpus(sums[2 * i]), metric.corpus(sums[2 * i + 1])
            for k in metric.keys:
                diffs[k].append(abs(b[k] - a[k]))
    out = {}
    for i, metric in enumerate(built.values()):
        a, b = metric.corpus(stats[2 * i].sum(0)), metric.corpus(stats[2 * i + 1].sum(0))
        for k in metric.keys:
            sample = np.array(diffs[k])
            # sacrebleu's statistic: resampled |differences| centred on their mean, against the observed one
            beyond = int(np.sum(sample - sample.mean() >= abs(b[k] - a[k])))
            p = (beyond + 1) / (len(sample) + 1)
            out[k] = {"a": a[k], "b": b[k], "delta": b[k] - a[k], "p_value": p, "significant": p < ALPHA,
                      "n": len(refs)}
    return out


def paired_means(a: Sequence[float], b: Sequence[float], n_bootstrap: int = DEFAULT_BOOTSTRAP,
                 seed: int | None = DEFAULT_SEED) -> dict[str, Any]:
    """Whether two systems' per-row scores of a learned metric (MetricX) differ on the same rows: {"a", "b" (the
    means), "delta" (b − a), "p_value", "significant", "n"}, by a two-sided paired bootstrap: rows resampled,
    the resampled mean differences centred on their mean, p = share reaching the observed |difference|, with +1
    smoothing."""
    _check_bootstrap(n_bootstrap)
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) != len(y) or not len(x):
        raise ValueError(f"paired scores need the same rows on both sides, got {len(x)} and {len(y)}")
    diff = y - x
    rng = np.random.default_rng(seed)
    sample = np.array([diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(n_bootstrap)])
    beyond = int(np.sum(np.abs(sample - sample.mean()) >= abs(diff.mean())))
    p = (beyond + 1) / (n_bootstrap + 1)
    return {"a": float(x.mean()), "b": float(y.mean()), "delta": float(diff.mean()), "p_value": p,
            "significant": p < ALPHA, "n": len(x)}
