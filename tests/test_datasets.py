"""Training sets from linguists' work (app.annotation.datasets) on a real SQLite store: corrections, post-edits and
labels, duplicates merged, disagreements by majority with ties dropped, a held-out split by input hash."""
import json

import pytest

from app.annotation import campaigns as C
from app.annotation.datasets import build, from_annotations, from_campaign, held_out, write
from app.annotation.rights import Identity, Refused
from app.annotation.store import Annotation, AnnotationStore

ADMIN = Identity("root", admin=True, protected=True)
ALICE, BOB, CAROL = (Identity(n, protected=True) for n in ("alice", "bob", "carol"))


def test_rules_duplicates_majority_ties_and_a_stable_held_out_split():
    pairs = [("a", "A"), ("a", "A"), ("b", "B1"), ("b", "B1"), ("b", "B2"), ("c", "C1"), ("c", "C2"),
             ("d", "D"), ("", "x"), ("e", "  ")]
    d = build(pairs, "test", "summarization", percent=0)
    assert {(e.input, e.target, e.votes) for e in d.train} == {("a", "A", 2), ("b", "B1", 2), ("d", "D", 1)}
    assert d.counts == {"judgements": 8, "inputs": 4, "duplicates": 2, "conflicts_kept": 1, "conflicts_dropped": 1}
    assert "2 duplicate(s) merged, 1 disagreement(s) settled by majority, 1 tie(s) dropped" in d.summary()
    inputs = [f"sentence {i}" for i in range(400)]
    split = build(((t, "x") for t in inputs), "test", "summarization")
    out = {e.input for e in split.heldout}
    assert out == {t for t in inputs if held_out(t)} and 20 < len(out) < 60          # about 10%
    bigger = build(((t, "x") for t in inputs + [f"more {i}" for i in range(100)]), "test", "summarization")
    assert out <= {e.input for e in bigger.heldout}                                 # held out once, held out later
    assert split.fingerprint() == build(((t, "x") for t in inputs), "t", "s").fingerprint()


def test_corrections_from_the_annotations_store(tmp_path):
    with AnnotationStore(tmp_path / "a.db") as store:
        for who, corrected in (("Ann", "Der Hund bellt."), ("Ben", "Der Hund bellt."), ("Cy", "")):
            store.save(Annotation(task="summarization", model_id="m", input="The dog barks.", output="Hund",
                                  annotator=who, corrected_output=corrected))
        store.save(Annotation(task="tagging", model_id="m", input="x", output="y", annotator="Ann",
                              corrected_output="z"))
        d = from_annotations(store, "summarization")
    assert [(e.input, e.target, e.votes) for e in d.train + d.heldout] == [("The dog barks.", "Der Hund bellt.", 2)]
    assert d.counts["judgements"] == 2 and d.task == "summarization"


def campaign(store, tmp_path, protocol, rows, labels=()):
    path = tmp_path / f"{protocol}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    spec = C.CampaignSpec(protocol, "summarization" if protocol == "postedit" else "classification", protocol,
                          overlap=3, labels=tuple(labels))
    return C.create_campaign(store, spec, path, ident=ADMIN)["id"]


def judge(store, cid, who, answer):
    while not (view := C.next_item(store, cid, who))["done"]:
        C.submit(store, cid, view["item_id"], {o["slot"]: answer(view, o) for o in view["outputs"]}, 3.0, who)


def test_post_edits_of_a_campaign_and_who_may_read_them(tmp_path):
    rows = [{"id": f"s{i}", "source": f"Quelle {i}", "output": f"output {i}"} for i in range(4)]
    with AnnotationStore(tmp_path / "c.db") as store:
        cid = campaign(store, tmp_path, "postedit", rows)
        judge(store, cid, ALICE, lambda v, o: {"corrected": o["text"].replace("output", "fixed")})
        judge(store, cid, BOB, lambda v, o: {"corrected": o["text"].replace("output", "fixed")})
        judge(store, cid, CAROL, lambda v, o: {"corrected": o["text"].replace("output", "other")})
        d = from_campaign(store, cid, ADMIN)
        with pytest.raises(Refused):
            from_campaign(store, cid, ALICE)
    got = sorted((e.input, e.target, e.votes) for e in d.train + d.heldout)
    assert got == [(f"Quelle {i}", f"fixed {i}", 2) for i in range(4)] and d.counts["conflicts_kept"] == 4
    paths = write(d, tmp_path / "out")
    lines = [json.loads(x) for p in ("train", "heldout") for x in paths[p].read_text().splitlines()]
    assert sorted((x["input"], x["target"]) for x in lines) == [(f"Quelle {i}", f"fixed {i}") for i in range(4)]
    about = json.loads(paths["about"].read_text())
    assert about["fingerprint"] == d.fingerprint() and about["counts"] == d.counts


def test_labels_of_a_classification_campaign_and_protocols_without_targets(tmp_path):
    rows = [{"id": "s0", "source": "Great film!", "output": "negative"}]
    with AnnotationStore(tmp_path / "l.db") as store:
        cid = campaign(store, tmp_path, "label", rows, labels=("positive", "negative"))
        for who in (ALICE, BOB, CAROL):
            judge(store, cid, who, lambda v, o: {"label": "positive"})
        d = from_campaign(store, cid, ADMIN)
        esa = campaign(store, tmp_path, "esa", [{"source": "x", "output": "y"}])
        with pytest.raises(ValueError, match="uses esa, which gives no target to train on"):
            from_campaign(store, esa, ADMIN)
    assert [(e.input, e.target, e.votes) for e in d.train + d.heldout] == [("Great film!", "positive", 3)]
