"""Krippendorff's alpha against hand computation and Krippendorff's own published example."""
import pytest

from app.annotation.agreement import agreement, agreement_frame, coincidences, krippendorff_alpha, rating_units
from app.annotation.store import Annotation, item_key

# A small table worked by hand: 3 items; item 1 rated 1 and 2, item 2 rated 3, 3, 4 (three annotators),
# item 3 rated 5 and 4.
#
# Coincidences (each ordered pair in a unit of m values weighs 1/(m-1)):
#   item 1 (m=2): o(1,2) = o(2,1) = 1
#   item 2 (m=3): pairs (3,3)x2, (3,4)x2, (4,3)x2, each 1/2  ->  o(3,3) = 1, o(3,4) = o(4,3) = 1
#   item 3 (m=2): o(4,5) = o(5,4) = 1
# Marginals n_1..n_5 = 1, 1, 2, 2, 1;  n = 7.   alpha = 1 - (n-1) * sum o δ / sum n_c n_k δ
#
# Interval, δ = (c-k)^2: observed sum o δ = 6 pairs at distance 1 = 6.
#   expected sum over c<k of n_c n_k (c-k)^2: 1-2:1  1-3:8  1-4:18  1-5:16  2-3:2  2-4:8  2-5:9  3-4:4  3-5:8
#   4-5:2 = 76, both orders 152.  alpha = 1 - 6*6/152 = 1 - 36/152 = 29/38 = 0.763158
# Nominal, δ = [c != k]: observed 6; expected n^2 - sum n_c^2 = 49 - 11 = 38.  alpha = 1 - 36/38 = 1/19 = 0.052632
# Ordinal, δ = (n_c + … + n_k - (n_c + n_k)/2)^2:
#   1-2: (2-1)^2=1  1-3: 2.5^2=6.25  1-4: 4.5^2=20.25  1-5: 6^2=36  2-3: 1.5^2=2.25  2-4: 3.5^2=12.25
#   2-5: 5^2=25  3-4: 2^2=4  3-5: 3.5^2=12.25  4-5: 1.5^2=2.25
#   observed: 2*1 (1,2) + 2*4 (3,4) + 2*2.25 (4,5) = 14.5
#   expected: 1 + 12.5 + 40.5 + 36 + 4.5 + 24.5 + 25 + 16 + 24.5 + 4.5 = 189, both orders 378
#   alpha = 1 - 6*14.5/378 = 1 - 87/378 = 97/126 = 0.769841
SMALL = [(1, 2), (3, 3, 4), (5, 4)]


def test_small_table_by_hand():
    o = coincidences(SMALL)
    assert o == {(1, 2): 1, (2, 1): 1, (3, 3): 1, (3, 4): 1, (4, 3): 1, (4, 5): 1, (5, 4): 1}
    assert krippendorff_alpha(SMALL, "interval") == pytest.approx(29 / 38)
    assert krippendorff_alpha(SMALL, "nominal") == pytest.approx(1 / 19)
    assert krippendorff_alpha(SMALL, "ordinal") == pytest.approx(97 / 126)


# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", reliability data with missing values:
# 4 observers x 12 units. Published: nominal .743, ordinal .815, interval .849, ratio .797.
N = None
KRIPPENDORFF_2011 = list(zip(
    [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
    [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],
))


@pytest.mark.parametrize("metric, published", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849),
                                               ("ratio", 0.797)])
def test_krippendorff_2011_example(metric, published):
    assert round(krippendorff_alpha(KRIPPENDORFF_2011, metric), 3) == published


def test_undefined_cases():
    assert krippendorff_alpha([(3,), (None, 4)]) is None          # nothing pairable
    assert krippendorff_alpha([(3, 3), (3, 3, 3)]) is None        # no variation
    assert krippendorff_alpha([(1, 1), (5, 5)], "ordinal") == 1.0
    with pytest.raises(ValueError, match="unknown metric"):
        krippendorff_alpha(SMALL, "cosine")


def ann(task, model, inp, who, rating, updated="2026-01-01T00:00:00.000000Z"):
    return Annotation(task=task, model_id=model, input=inp, output="out", annotator=who, rating=rating,
                      item_key=item_key(task, model, inp, "out"), updated_at=updated)


def test_agreement_per_task_and_model():
    records = [
        # summarize on m1: the hand-computed table, plus a single-annotator item and an unrated one (ignored)
        ann("summarize", "m1", "a", "A", 1), ann("summarize", "m1", "a", "B", 2),
        ann("summarize", "m1", "b", "A", 3), ann("summarize", "m1", "b", "B", 3), ann("summarize", "m1", "b", "C", 4),
        ann("summarize", "m1", "c", "A", 5), ann("summarize", "m1", "c", "C", 4),
        ann("summarize", "m1", "alone", "A", 2), ann("summarize", "m1", "c", "D", None),
        # B rated item "c" twice: the later edit (4) counts, the earlier (1) does not
        ann("summarize", "m1", "c", "B", 1, "2026-01-01T00:00:00.000000Z"),
        ann("summarize", "m1", "c", "B", 4, "2026-02-01T00:00:00.000000Z"),
        # answer on m2: perfect agreement
        ann("answer", "m2", "q1", "A", 1), ann("answer", "m2", "q1", "B", 1),
        ann("answer", "m2", "q2", "A", 5), ann("answer", "m2", "q2", "B", 5),
        # tag on m2: one annotator only
        ann("tag", "m2", "t", "A", 3),
    ]
    units = rating_units(records)
    assert units[item_key("summarize", "m1", "c", "out")] == {"A": 5, "C": 4, "B": 4}
    by_task = {r.group: r for r in agreement(records, by="task")}
    s = by_task["summarize"]
    assert (s.items, s.annotators, s.ratings) == (3, 3, 8)
    # item c is now (5, 4, 4): units (1,2), (3,3,4), (5,4,4)
    assert s.alpha_interval == pytest.approx(krippendorff_alpha([(1, 2), (3, 3, 4), (5, 4, 4)], "interval"))
    assert by_task["answer"].alpha_ordinal == 1.0 and by_task["answer"].items == 2
    assert by_task["tag"].alpha_interval is None and "no item rated by two" in by_task["tag"].note
    assert list(by_task) == ["answer", "summarize", "tag", "all"] and by_task["all"].items == 5
    by_model = {r.group: r for r in agreement(records, by="model_id", include_all=False)}
    assert set(by_model) == {"m1", "m2"} and by_model["m2"].alpha_nominal == 1.0
    df = agreement_frame(records, by="model_id")
    assert list(df.columns[:4]) == ["group", "items", "annotators", "ratings"] and len(df) == 3
    with pytest.raises(ValueError, match="grouped by task, model_id or all"):
        agreement(records, by="annotator")
