"""app/metrics.py: surface metrics against hand-computed numbers and against sacrebleu and rouge-score called
directly; the bootstrap intervals and the paired test against sacrebleu's own (same seed, same draws)."""
import math

import pytest
import sacrebleu
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.significance import PairedTest

from app import metrics

REFS = ["the cat sat on the mat", "a dog ran in the park", "it is raining in the city today",
        "we like green tea with milk", "the train leaves at noon", "she reads a book every night"] * 4
# system A: close to the references; system B: much worse
HYPS_A = ["the cat sat on a mat", "a dog runs in the park", "it rains in the city today",
          "we like tea with milk", "the train leaves at midday", "she reads one book each night"] * 4
HYPS_B = ["cat mat", "dog", "rain today", "tea", "a train", "book"] * 4

ZH_REF = "我爱北京天安门"
ZH_HYP = "我爱北京的天安门"
HI_REF = "मैं बाजार जा रहा हूँ"
HI_HYP = "मैं घर जा रहा हूँ"


@pytest.fixture(autouse=True)
def sacrebleu_default_seed(monkeypatch):
    """sacrebleu reads its seed from the environment: the parity tests need its default (12345)."""
    monkeypatch.delenv("SACREBLEU_SEED", raising=False)


def test_bleu_tokenizer_by_language():
    assert metrics.bleu_tokenizer("zh") == "zh"
    assert metrics.bleu_tokenizer("zh-Hant") == "zh"
    assert metrics.bleu_tokenizer("JA") == "ja-mecab"
    assert metrics.bleu_tokenizer("ko_KR") == "ko-mecab"
    assert metrics.bleu_tokenizer("th") == "char"
    assert metrics.bleu_tokenizer("de") == "13a"
    assert metrics.bleu_tokenizer(None) == "13a"
    assert metrics.bleu_tokenizer("") == "13a"


def test_identity_scores_perfectly():
    [row] = metrics.sentence_scores([REFS[2]], [REFS[2]], "en", metrics.METRICS)
    assert row == pytest.approx({"bleu": 100, "chrf": 100, "ter": 0, "rouge1": 100, "rouge2": 100, "rougeL": 100})
    corpus = metrics.corpus_scores(REFS, REFS, "en", metrics.METRICS, n_bootstrap=100)
    assert {k: v["score"] for k, v in corpus.items()} == pytest.approx(row)


def test_hand_computed_values():
    # every n-gram matches, hypothesis half the reference's length: BLEU = brevity penalty = exp(1 - 10/5)
    [row] = metrics.sentence_scores(["a b c d e"], ["a b c d e f g h i j"], None, ("bleu",))
    assert row["bleu"] == pytest.approx(100 * math.exp(-1))
    # one substituted word of four: TER 25
    [row] = metrics.sentence_scores(["a b c d"], ["a b x d"], None, ("ter",))
    assert row["ter"] == pytest.approx(25.0)
    # Chinese characters: 我爱北京 vs 我爱上海 share 2 of 4 characters, 1 of 3 bigrams, an LCS of 2
    [row] = metrics.sentence_scores(["我爱北京"], ["我爱上海"], "zh", ("rouge", "ter"))
    assert row["rouge1"] == pytest.approx(50) and row["rougeL"] == pytest.approx(50)
    assert row["rouge2"] == pytest.approx(100 / 3)
    assert row["ter"] == pytest.approx(50)   # 2 edits of 4 characters (zh splits characters for TER)
    [row] = metrics.sentence_scores(["我爱北京"], ["我爱上海"], None, ("ter",))
    assert row["ter"] == pytest.approx(100)  # without: one "word" substituted


def test_sentence_scores_equal_direct_sacrebleu_calls():
    rows = metrics.sentence_scores(HYPS_A[:6], REFS[:6], "en")
    for row, hyp, ref in zip(rows, HYPS_A, REFS):
        assert row["bleu"] == pytest.approx(sacrebleu.sentence_bleu(hyp, [ref]).score)
        assert row["chrf"] == pytest.approx(sacrebleu.sentence_chrf(hyp, [ref], word_order=2).score)
        assert row["ter"] == pytest.approx(sacrebleu.sentence_ter(hyp, [ref]).score)


def test_corpus_scores_equal_direct_sacrebleu_calls():
    corpus = metrics.corpus_scores(HYPS_A, REFS, "en", n_bootstrap=100)
    assert corpus["bleu"]["score"] == pytest.approx(sacrebleu.corpus_bleu(HYPS_A, [REFS]).score)
    assert corpus["chrf"]["score"] == pytest.approx(sacrebleu.corpus_chrf(HYPS_A, [REFS], word_order=2).score)
    assert corpus["ter"]["score"] == pytest.approx(sacrebleu.corpus_ter(HYPS_A, [REFS]).score)
    chrf = CHRF(word_order=2)
    chrf.corpus_score(HYPS_A, [REFS])
    assert corpus["chrf"]["signature"] == str(chrf.get_signature())   # nrefs:1|…|nw:2|…
    assert "tok:13a" in corpus["bleu"]["signature"]


def test_cjk_tokenizers_change_bleu():
    [zh] = metrics.sentence_scores([ZH_HYP], [ZH_REF], "zh", ("bleu",))
    [plain] = metrics.sentence_scores([ZH_HYP], [ZH_REF], None, ("bleu",))
    assert zh["bleu"] == pytest.approx(sacrebleu.sentence_bleu(ZH_HYP, [ZH_REF], tokenize="zh").score)
    assert plain["bleu"] == pytest.approx(sacrebleu.sentence_bleu(ZH_HYP, [ZH_REF], tokenize="13a").score)
    assert zh["bleu"] > 30 and plain["bleu"] < zh["bleu"]   # 13a sees one "word" per sentence
    ja_ref, ja_hyp = "私は毎朝コーヒーを飲みます。", "私は毎朝お茶を飲みます。"
    [ja] = metrics.sentence_scores([ja_hyp], [ja_ref], "ja", ("bleu",))
    assert ja["bleu"] == pytest.approx(sacrebleu.sentence_bleu(ja_hyp, [ja_ref], tokenize="ja-mecab").score)
    ko_ref, ko_hyp = "나는 아침마다 커피를 마십니다.", "나는 아침마다 차를 마십니다."
    [ko] = metrics.sentence_scores([ko_hyp], [ko_ref], "ko", ("bleu",))
    assert ko["bleu"] == pytest.approx(sacrebleu.sentence_bleu(ko_hyp, [ko_ref], tokenize="ko-mecab").score)


def test_rouge_tokenizer_reads_non_latin_scripts():
    tokens = metrics.UnicodeWordTokenizer().tokenize("Hello, World! हिंदी भाषा 中文ですカナ ที่นี่ 한국어 문장")
    assert tokens == ["hello", "world", "हिंदी", "भाषा", "中", "文", "で", "す", "カ", "ナ", "ที่", "นี่", "한국어", "문장"]
    default = rouge_scorer.RougeScorer(["rouge1", "rougeL"])
    for hyp, ref, lang in [(HI_HYP, HI_REF, "hi"), (ZH_HYP, ZH_REF, "zh")]:
        # the reason the tokenizer exists: rouge-score's own keeps only [a-z0-9] and scores these 0
        assert default.score(ref, ref)["rouge1"].fmeasure == 0
        [same, partial] = metrics.sentence_scores([ref, hyp], [ref, ref], lang, ("rouge",))
        assert same == pytest.approx({"rouge1": 100, "rouge2": 100, "rougeL": 100})
        assert 0 < partial["rouge1"] < 100
    [hi] = metrics.sentence_scores([HI_HYP], [HI_REF], "hi", ("rouge",))
    assert hi["rouge1"] == pytest.approx(80)   # 4 of 5 words


def test_english_rouge_stems_other_languages_do_not():
    [en] = metrics.sentence_scores(["the cats ran"], ["the cat ran"], "en", ("rouge",))
    [other] = metrics.sentence_scores(["the cats ran"], ["the cat ran"], "de", ("rouge",))
    assert en["rouge1"] == pytest.approx(100) and other["rouge1"] == pytest.approx(200 / 3)


def test_empty_hypothesis_scores_zero_and_empty_reference_is_left_out():
    [empty_hyp, empty_ref, none_ref] = metrics.sentence_scores(
        ["", "a cat", "a cat"], ["a cat", " ", None], "en", metrics.METRICS)
    assert empty_hyp == {"bleu": 0, "chrf": 0, "ter": 100, "rouge1": 0, "rouge2": 0, "rougeL": 0}
    assert set(empty_ref.values()) == {None} and set(none_ref.values()) == {None}
    with_gaps = metrics.corpus_scores(HYPS_A + ["x", "y"], REFS + ["", None], "en", n_bootstrap=100)
    without = metrics.corpus_scores(HYPS_A, REFS, "en", n_bootstrap=100)
    assert with_gaps == without and with_gaps["bleu"]["n"] == len(REFS)
    with pytest.raises(ValueError, match="no row has a reference"):
        metrics.corpus_scores(["x"], [""])


def test_bootstrap_interval_contains_score_and_is_reproducible():
    first = metrics.corpus_scores(HYPS_A, REFS, "en", metrics.METRICS, seed=7)
    assert first == metrics.corpus_scores(HYPS_A, REFS, "en", metrics.METRICS, seed=7)
    assert first != metrics.corpus_scores(HYPS_A, REFS, "en", metrics.METRICS, seed=8)
    for key, s in first.items():
        assert s["low"] <= s["score"] <= s["high"] and s["low"] < s["high"], key


def test_bootstrap_in_blocks_draws_the_same_rows(monkeypatch):
    whole = metrics.corpus_scores(HYPS_A, REFS, "en", metrics.METRICS, n_bootstrap=101)
    monkeypatch.setattr(metrics, "RESAMPLE_CELLS", 2 * len(REFS))   # two resamples per block
    assert metrics.corpus_scores(HYPS_A, REFS, "en", metrics.METRICS, n_bootstrap=101) == whole


def test_bootstrap_matches_sacrebleu_confidence():
    ours = metrics.corpus_scores(HYPS_A, REFS, "en", n_bootstrap=1000)   # seed 12345, sacrebleu's default
    for key, metric in [("bleu", BLEU()), ("chrf", CHRF(word_order=2)), ("ter", TER())]:
        theirs = metric.corpus_score(HYPS_A, [REFS], n_bootstrap=1000)
        assert (ours[key]["high"] - ours[key]["low"]) / 2 == pytest.approx(theirs._ci, rel=1e-5), key


def test_paired_comparison_flags_a_better_system():
    result = metrics.paired_comparison(HYPS_B, HYPS_A, REFS, "en", metrics.METRICS)
    for key, r in result.items():
        assert r["significant"] and r["p_value"] < 0.01, key
        assert (r["delta"] < 0) if key == "ter" else (r["delta"] > 0), key
        assert r["delta"] == pytest.approx(r["b"] - r["a"])


def test_identical_systems_are_not_significant():
    # sacrebleu's own test gives identical systems p = 1/1001 (a strict ">" on all-zero differences)
    result = metrics.paired_comparison(HYPS_A, list(HYPS_A), REFS, "en", metrics.METRICS)
    for key, r in result.items():
        assert r["delta"] == 0 and r["p_value"] == 1.0 and not r["significant"], key


def test_paired_p_value_matches_sacrebleu():
    # two systems close enough that the p-value is not at its floor
    hyps_c = list(HYPS_A)
    hyps_c[0], hyps_c[7], hyps_c[14] = "the cat sat on the mat", "a dog ran in a park", "the rain is in the city"
    ours = metrics.paired_comparison(HYPS_A, hyps_c, REFS, "en", ("bleu", "chrf"))
    _, theirs = PairedTest([("a", HYPS_A), ("c", hyps_c)], {"BLEU": BLEU(), "chrF": CHRF(word_order=2)},
                           [REFS], test_type="bs", n_samples=1000)()
    assert 0.01 < ours["bleu"]["p_value"] < 1
    assert ours["bleu"]["p_value"] == pytest.approx(theirs["BLEU"][1].p_value)
    assert ours["chrf"]["p_value"] == pytest.approx(theirs["chrF2++"][1].p_value)


@pytest.mark.parametrize("call, message", [
    (lambda: metrics.sentence_scores(["a", "b"], ["a"]), "2 hypotheses .* for 1 references"),
    (lambda: metrics.paired_comparison(["a"], ["a", "b"], ["a"]), r"2 hypotheses \(b\) for 1 references"),
    (lambda: metrics.corpus_scores([], []), "no rows to score"),
    (lambda: metrics.sentence_scores(["a" * (metrics.MAX_CHARS_PER_ROW + 1)], ["a"]),
     "row 1: the hypothesis has .* above the limit"),
    (lambda: metrics.sentence_scores(["a"] * (metrics.MAX_ROWS + 1), ["a"] * (metrics.MAX_ROWS + 1)),
     "above the limit of 100,000"),
    (lambda: metrics.sentence_scores(["a"], [1.5]), "row 1: the reference is a float, not text"),
    (lambda: metrics.sentence_scores(["a"], ["a"], metrics=("bleu", "meteor")), "unknown metric 'meteor'"),
    (lambda: metrics.corpus_scores(["a"], ["a"], n_bootstrap=10), "n_bootstrap=10: give between 100"),
])
def test_bad_input_is_refused_with_a_clear_message(call, message):
    with pytest.raises(ValueError, match=message):
        call()
