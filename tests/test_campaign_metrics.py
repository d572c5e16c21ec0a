"""A campaign's automatic metrics and their correlation with the human scores: Pearson's r and Kendall's tau-b
against hand computations on small tables, and the results of a judged campaign whose items carry references."""
import itertools
import json
import math

import pytest
import sacrebleu

from app.annotation import campaigns as C
from app.annotation.campaign_stats import correlations, kendall_tau, pearson
from app.annotation.rights import Identity
from app.annotation.store import AnnotationStore

ADMIN = Identity("root", admin=True, protected=True)
ALICE = Identity("alice", protected=True)
SYSTEMS = ("Zephyr-MT", "Quokka-NMT")
REFS = ["The cat sleeps on the warm mat.", "Rain is expected in the north tomorrow.",
        "The museum opens its doors at nine.", "Farmers dry mangoes to sell them in winter.",
        "A new bridge will open next month."]
OUTS = {SYSTEMS[0]: ["The cat sleeps on the mat.", "Rain expected north tomorrow.", "The museum opens at nine.",
                     "Farmers dry mangoes for winter.", "A bridge opens next month."],
        SYSTEMS[1]: ["Cat mat.", "It will rain.", "Museum at nine o'clock.", "Mangoes.", "New bridge soon."]}


def hand_pearson(x, y):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def hand_kendall_b(x, y):
    c = d = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        sx, sy = (x[i] > x[j]) - (x[i] < x[j]), (y[i] > y[j]) - (y[i] < y[j])
        c += sx * sy > 0
        d += sx * sy < 0
        tx += sx != 0
        ty += sy != 0
    return (c - d) / math.sqrt(tx * ty)


def test_kendall_and_pearson_on_small_tables():
    assert kendall_tau([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.6)       # 8 concordant, 2 discordant
    assert kendall_tau([1, 1, 2, 3], [1, 2, 2, 3]) == pytest.approx(0.8)             # tau-b: 4 / √(5·5)
    assert kendall_tau([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)
    x, y = [0.1, 0.4, 0.4, 0.9, 0.3, 0.7, 0.2], [3, 5, 4, 9, 5, 6, 1]
    assert kendall_tau(x, y, block=2) == pytest.approx(hand_kendall_b(x, y))          # blocks change nothing
    assert pearson(x, y) == pytest.approx(hand_pearson(x, y))
    assert pearson([1, 1], [2, 3]) is None and kendall_tau([1], [2]) is None and kendall_tau([1, 1], [1, 2]) is None
    (seg,) = correlations([("esa", "chrf", 1.0, 2.0), ("esa", "chrf", 2.0, 1.0), ("esa", "chrf", 3.0, 3.0)], [])
    assert (seg.level, seg.points, seg.kendall) == ("segment", 3, pytest.approx(1 / 3))


def test_results_give_metrics_and_their_correlation_with_the_human_scores(tmp_path):
    rows = [{"id": f"s{i}", "source": f"Quelle {i}", "reference": ref,
             **{f"output_{name}": OUTS[name][i] for name in SYSTEMS}} for i, ref in enumerate(REFS)]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    human = {(SYSTEMS[0], i): 60 + 7 * i for i in range(5)} | {(SYSTEMS[1], i): [20, 45, 30, 10, 25][i]
                                                                for i in range(5)}
    with AnnotationStore(tmp_path / "c.db") as store:
        cid = C.create_campaign(store, C.CampaignSpec("refs", "translation", "esa"), path, ident=ADMIN)["id"]
        while not (view := C.next_item(store, cid, ALICE))["done"]:
            item = store.read("SELECT item_id, outputs FROM campaign_items WHERE campaign_id=? AND public_id=?",
                              (cid, view["item_id"]))[0]
            i, outputs = int(item[0][1:]), json.loads(item[1])
            by_text = {text: name for name, text in outputs.items()}
            C.submit(store, cid, view["item_id"], {o["slot"]: {"score": human[by_text[o["text"]], i]}
                                                    for o in view["outputs"]}, 4.0, ALICE)
        res = C.results(store, cid, ADMIN)
    table = {(r["system"], r["metric"]): r for r in res["metrics"]}
    for name in SYSTEMS:
        chrf = sacrebleu.corpus_chrf(OUTS[name], [REFS], word_order=2).score
        assert table[name, "chrf"]["score"] == round(chrf, 2) and table[name, "chrf"]["items"] == 5
        assert table[name, "chrf"]["ci_low"] <= table[name, "chrf"]["score"] <= table[name, "chrf"]["ci_high"]
        assert table[name, "bleu"]["score"] == round(sacrebleu.corpus_bleu(OUTS[name], [REFS]).score, 2)
    found = {(c["metric"], c["level"]): c for c in res["correlations"] if c["human"] == "esa"}
    hs, ms = [], []
    for name in SYSTEMS:
        for i in range(5):
            hs.append(human[name, i])
            ms.append(sacrebleu.sentence_chrf(OUTS[name][i], [REFS[i]], word_order=2).score)
    seg = found["chrf", "segment"]
    assert seg["points"] == 10
    assert seg["pearson"] == pytest.approx(round(hand_pearson(hs, ms), 4))
    assert seg["kendall"] == pytest.approx(round(hand_kendall_b(hs, ms), 4))
    system = found["chrf", "system"]   # two systems: the better by humans is the better by chrF
    assert system["points"] == 2 and system["kendall"] == 1.0 and system["pearson"] == 1.0


def test_no_references_no_metrics(tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_text(json.dumps({"source": "Quelle", "output_A": "a", "output_B": "b"}) + "\n", encoding="utf-8")
    with AnnotationStore(tmp_path / "n.db") as store:
        cid = C.create_campaign(store, C.CampaignSpec("plain", "translation", "esa"), path, ident=ADMIN)["id"]
        res = C.results(store, cid, ADMIN)
    assert res["metrics"] == [] and res["correlations"] == []
