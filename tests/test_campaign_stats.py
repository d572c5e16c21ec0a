"""The campaign statistics (app.annotation.campaign_stats) and protocols (app.annotation.protocols) against
hand computations on small tables."""
import json
import math

import pytest

from app.annotation import campaign_stats as st
from app.annotation.protocols import PROTOCOLS, Shown, entity_f1, parse_tagged, protocol_info, public, \
    word_edit_rate
from app.annotation.spans import PROTOCOLS_PATH

Z = 1.959963984540054


def test_bootstrap_mean_is_fixed_and_brackets_the_mean():
    assert st.bootstrap_mean([]) is None
    assert st.bootstrap_mean([5.0]) == (5.0, 5.0, 5.0)
    # Two values: a resample's mean is 2, 3 or 4 (each extreme with probability 1/4 > 2.5%): the interval is 2–4.
    assert st.bootstrap_mean([2, 4]) == (3.0, 2.0, 4.0)
    values = [10, 20, 30, 40, 90]
    first = st.bootstrap_mean(values)
    assert first == st.bootstrap_mean(values)            # fixed seed: the same report twice
    mean, lo, hi = first
    assert mean == 38.0 and 10 <= lo < mean < hi <= 90


def test_system_scores_average_annotators_within_an_item_then_items():
    rows = [("i1", "zephyr", "esa", 80), ("i1", "zephyr", "esa", 60), ("i2", "zephyr", "esa", 90),
            ("i1", "quokka", "esa", 50)]
    zephyr, = [s for s in st.system_scores(rows) if s.system == "zephyr"]
    assert (zephyr.items, zephyr.judgements, zephyr.mean) == (2, 3, 80.0)   # (70 + 90) / 2
    assert (zephyr.ci_low, zephyr.ci_high) == (70.0, 90.0)
    quokka, = [s for s in st.system_scores(rows) if s.system == "quokka"]
    assert (quokka.items, quokka.mean, quokka.ci_low, quokka.ci_high) == (1, 50.0, 50.0, 50.0)


def test_win_rates_count_decisive_judgements_with_wilson_intervals():
    outcomes = [("a", "b", "a"), ("a", "b", "a"), ("b", "a", "b"), ("a", "b", "tie"), ("b", "a", "both_bad")]
    w, = st.win_rates(outcomes)
    assert (w.system_x, w.system_y, w.judgements, w.x_wins, w.y_wins, w.ties, w.both_bad) == ("a", "b", 5, 2, 1, 1, 1)
    assert w.x_win_rate == pytest.approx(2 / 3)
    # Wilson by hand: p = 2/3, n = 3
    n, p = 3, 2 / 3
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    assert (w.ci_low, w.ci_high) == pytest.approx((centre - half, centre + half))
    assert (round(w.ci_low, 4), round(w.ci_high, 4)) == (0.2077, 0.9385)
    all_wins, = st.win_rates([("a", "b", "a")] * 12)
    assert all_wins.ci_low == pytest.approx(12 / (12 + Z * Z)) and all_wins.ci_high == 1.0


def test_alpha_by_hand_with_the_warning_below_30_items():
    # Units (x, x), (x, y), (y, y): o_xx = 2, o_xy = o_yx = 1, o_yy = 2; n_x = n_y = 3, n = 6.
    # alpha = 1 - (n - 1) * (o_xy + o_yx) / (2 n_x n_y) = 1 - 5 * 2 / 18 = 4/9
    units = {"u1": {"ann1": "x", "ann2": "x"}, "u2": {"ann1": "x", "ann2": "y"}, "u3": {"ann1": "y", "ann2": "y"},
             "u4": {"ann1": "y"}}
    a = st.alpha(units, "nominal", "label")
    assert a.alpha == pytest.approx(4 / 9) and (a.items, a.values) == (3, 6)
    assert "only 3 item(s)" in a.warning and "below 30" in a.warning
    numeric = {k: {w: {"x": 1, "y": 2}[v] for w, v in u.items()} for k, u in units.items()}
    assert st.alpha(numeric, "interval").alpha == pytest.approx(4 / 9)    # δ² = 1 for the one disagreement
    many = {i: {"a": i % 5, "b": i % 5} for i in range(30)}
    assert st.alpha(many, "interval").warning == "" and st.alpha(many, "interval").alpha == 1.0
    assert st.alpha({}, "nominal").alpha is None


def test_annotator_alpha_pairs_them_with_each_other_annotator():
    units = {"u1": {"a": 1, "b": 1, "c": 2}, "u2": {"a": 2, "b": 2}}
    # pairs with a: (1, 1), (1, 2), (2, 2) -> 4/9 as above
    assert st.annotator_alpha(units, "a", "interval") == pytest.approx(4 / 9)
    assert st.annotator_alpha(units, "nobody", "interval") is None


def test_span_agreement_is_character_overlap_f1_pooled_over_pairs():
    a = [{"start": 0, "end": 4, "side": "output"}]
    b = [{"start": 2, "end": 6, "side": "output"}]
    other_side = [{"start": 0, "end": 4, "side": "input"}]
    assert st.span_agreement({"u": {"a": a, "b": b}}) == st.SpanAgreement(1, 0.5)   # 2·2 / (4 + 4)
    assert st.span_agreement({"u": {"a": a, "c": other_side}}).f1 == 0.0
    pooled = st.span_agreement({"u1": {"a": a, "b": b}, "u2": {"a": a, "b": a}})
    assert pooled == st.SpanAgreement(2, (2 * 2 + 2 * 4) / (8 + 8))
    assert st.span_agreement({"u": {"a": [], "b": []}}).f1 is None
    three = {"u": {"a": a, "b": b, "c": a}}
    assert st.span_agreement(three, who="b") == st.SpanAgreement(2, 0.5)


def test_median_and_check_rate():
    assert st.median([3, 1, 10]) == 3 and st.median([1, 2]) == 1.5 and st.median([]) is None
    assert st.check_rate([True, False, None, True]) == st.CheckRate(3, 2, 2 / 3)
    assert st.check_rate([None]) == st.CheckRate(0, 0, None)


# ---------------------------------------------------------------------------------------------------------------
# Protocols


class Rules:
    categories = [{"id": "accuracy", "label": "Accuracy", "help": ""}]
    labels = ["LOC", "PER", "positive", "negative"]


ONE = Shown("Die Firma in Paris.", {"A": "The company in Paris."})
TWO = Shown("Die Firma in Paris.", {"A": "The company in Paris.", "B": "The firm at Paris."})


def test_registry_is_the_assets_list():
    assert set(PROTOCOLS) == set(protocol_info()) == {"likert", "da", "esa", "mqm", "pairwise", "label", "relabel",
                                                     "postedit"}
    data = json.loads(PROTOCOLS_PATH.read_text(encoding="utf-8"))
    assert [p["id"] for p in data["protocols"]] == ["none", "esa", "mqm"]     # the annotation panel's, unchanged


@pytest.mark.parametrize("pid, judgement, words", [
    ("likert", {}, "missing `rating`"), ("likert", {"rating": 6}, "from 1 to 5"),
    ("da", {"score": None}, "missing `score`"), ("da", {"score": "high"}, "a number from 0 to 100"),
    ("esa", {"spans": []}, "missing `score`"), ("esa", {"score": 50.5}, "whole number"),
    ("mqm", {}, "missing `spans`"), ("label", {"label": "neutral"}, "not one of this campaign's labels"),
    ("relabel", {}, "missing `entities`"), ("postedit", {}, "missing `corrected`"),
    ("esa", {"score": 50, "rating": 3}, "unknown field(s) rating"),
])
def test_a_missing_or_bad_field_is_named(pid, judgement, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        PROTOCOLS[pid].check(judgement, ONE, Rules())


def test_every_output_shown_must_be_judged():
    with pytest.raises(ValueError, match="no judgement for output B"):
        PROTOCOLS["esa"].check({"A": {"score": 70}}, TWO, Rules())
    with pytest.raises(ValueError, match="output B: missing `score`"):
        PROTOCOLS["esa"].check({"A": {"score": 70}, "B": {}}, TWO, Rules())
    with pytest.raises(ValueError, match="give one judgement per output"):
        PROTOCOLS["esa"].check({"score": 70}, TWO, Rules())
    out = PROTOCOLS["esa"].check({"A": {"score": 70}, "B": {"score": 40}}, TWO, Rules())
    assert out == {"outputs": {"A": {"score": 70, "spans": []}, "B": {"score": 40, "spans": []}}}
    assert PROTOCOLS["esa"].scores(out) == {"A": {"esa": 70.0}, "B": {"esa": 40.0}}


def test_scores_of_each_protocol():
    span = {"start": 0, "end": 3, "side": "output", "category": "accuracy", "severity": "major"}
    minor = dict(span, start=4, end=11, severity="minor", category="fluency")
    mqm = PROTOCOLS["mqm"].check({"spans": [span, minor]}, ONE, Rules())
    assert PROTOCOLS["mqm"].scores(mqm) == {"A": {"mqm": -6.0}}            # major 5 + minor 1, negated
    assert PROTOCOLS["mqm"].scores(PROTOCOLS["mqm"].check({"spans": []}, ONE, Rules())) == {"A": {"mqm": 0.0}}
    pair = PROTOCOLS["pairwise"].check({"preference": "B"}, TWO, Rules())
    assert PROTOCOLS["pairwise"].scores(pair) == {"A": {"pairwise": 0.0}, "B": {"pairwise": 1.0}}
    by_system = PROTOCOLS["pairwise"].by_system(pair, ["quokka", "zephyr"])
    assert by_system["preference"] == "zephyr" and PROTOCOLS["pairwise"].scores(by_system)["zephyr"] == {
        "pairwise": 1.0}
    assert PROTOCOLS["pairwise"].by_slot(by_system, ["quokka", "zephyr"]) == public(pair)
    label = PROTOCOLS["label"].check({"label": "positive"}, Shown("great", {"A": "positive"}), Rules())
    assert PROTOCOLS["label"].scores(label) == {"A": {"label_correct": 1.0}}
    post = PROTOCOLS["postedit"].check({"corrected": "The firm in Paris."}, ONE, Rules())
    assert PROTOCOLS["postedit"].scores(post) == {"A": {"hter": 0.25}}      # 1 of 4 words substituted
    assert public(post) == {"outputs": {"A": {"corrected": "The firm in Paris."}}}
    tagged = Shown("Die Firma in Paris.", {"A": "Firma (PER); Paris (LOC)"})
    ents = PROTOCOLS["relabel"].check({"entities": [{"start": 13, "end": 18, "label": "LOC"}]}, tagged, Rules())
    assert PROTOCOLS["relabel"].scores(ents) == {"A": {"entity_f1": round(2 / 3, 6)}}


def test_helpers_by_hand():
    assert word_edit_rate("a b c d", "a x c d") == 0.25 and word_edit_rate("a b", "a b") == 0.0
    assert parse_tagged("Die Firma (ORG); Paris (LOC)") == [("Die Firma", "ORG"), ("Paris", "LOC")]
    assert entity_f1([], []) == 1.0 and entity_f1([("a", "X")], [("a", "Y")]) == 0.0


def test_degraded_checks_and_expected_answers():
    esa = PROTOCOLS["esa"]
    original = {"outputs": {"z": {"score": 80, "spans": []}}}
    lower = {"outputs": {"z": {"score": 30, "spans": []}}}
    marked = {"outputs": {"z": {"score": 90, "spans": [{"start": 5, "end": 9, "side": "output"}]}}}
    missed = {"outputs": {"z": {"score": 90, "spans": []}}}
    assert esa.passes_degraded(original, lower, {"z": (4, 12)}) is True
    assert esa.passes_degraded(original, marked, {"z": (4, 12)}) is True
    assert esa.passes_degraded(original, missed, {"z": (4, 12)}) is False
    assert esa.passes_degraded(None, missed, {"z": (4, 12)}) is None
    pair = {"preference": "q", "spans": [], "systems": ["z", "q"]}
    assert PROTOCOLS["pairwise"].passes_degraded(None, pair, {"z": (0, 3)}) is True
    assert PROTOCOLS["pairwise"].passes_degraded(None, dict(pair, preference="z"), {"z": (0, 3)}) is False
    assert esa.matches({"score": [0, 30]}, lower) and not esa.matches({"score": [0, 30]}, original)
    assert esa.matches({"z": {"score": [70, 100]}}, original)
