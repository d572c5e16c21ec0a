"""The Campaigns tab's handlers (app/annotation/tabs/campaign.py), called directly with an Identity and plain
values, no server: judging through the actions the page sends (submit and next, back, skip, a refused submit keeps
the item), blindness of every payload, progress, the admin's create and results, rights on a protected
deployment; and the tab builds inside a Blocks with its `act` event."""
import html
import json
import re

import gradio as gr
import pytest

from app.annotation import campaigns as C
from app.annotation.rights import Identity
from app.annotation.store import AnnotationStore
from app.annotation.tabs import campaign as T
from app.assets import load_assets
from app.context import AppContext
from app.settings import Settings

SYSTEMS = ("Zephyr-MT", "Quokka-NMT")
OPEN = Identity()
ADMIN = Identity("root", admin=True, protected=True)
ALICE = Identity("alice", protected=True)


def items_file(tmp_path, n=4):
    rows = [{"id": f"s{i}", "source": f"Der Satz Nummer {i} hat einige Wörter.",
             "output_" + SYSTEMS[0]: f"Sentence number {i} has a few words.",
             "output_" + SYSTEMS[1]: f"The sentence {i} has some words in it."} for i in range(n)]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def store(tmp_path):
    with AnnotationStore(tmp_path / "camp.db") as s:
        yield s


def make(store, tmp_path, protocol="esa", ident=OPEN, **form):
    fields = {"name": "de-en news", "task": "summarization", "protocol": protocol, "guidelines": "# Judge well",
              "overlap": 2, "items": str(items_file(tmp_path))} | form
    out = T.create(store, ident, T.CampaignForm(**fields))
    assert out.kind == "info", out.message
    return out


def act(store, cid, who, action, ident=OPEN):
    return T.judge_act(store, ident, cid, who, json.dumps(action)).screen


def test_create_lists_the_campaign_and_refuses_bad_forms_with_nothing_stored(store, tmp_path):
    out = make(store, tmp_path)
    assert "4 items, 2 system(s)" in out.message and out.campaign_id
    assert [cid for _, cid in out.choices] == [out.campaign_id] == [cid for _, cid in T.campaign_choices(store)]
    assert "ESA" in out.choices[0][0]
    for bad, said in [({"overlap": 0}, "overlap"), ({"items": None}, "upload the items"),
                      ({"name": " "}, "name"), ({"protocol": "label"}, "labels"),
                      ({"check_fraction": 0.9}, "check_fraction")]:
        refused = T.create(store, OPEN, T.CampaignForm(**({"name": "x", "task": "summarization", "protocol": "esa",
                                                            "items": str(items_file(tmp_path))} | bad)))
        assert refused.kind == "error" and refused.message.startswith("Not created") and said in refused.message
    assert len(C.list_campaigns(store)) == 1
    refused = T.create(store, ALICE, T.CampaignForm("x", "summarization", "esa", items=str(items_file(tmp_path))))
    assert refused.kind == "error" and "for admins" in refused.message
    assert make(store, tmp_path, ident=ADMIN, name="by root").campaign_id


def test_judging_through_actions_is_blind_and_counts_progress(store, tmp_path):
    cid = make(store, tmp_path).campaign_id
    first = T.judge_open(store, OPEN, cid, "alice")
    p = first.screen
    assert first.guidelines == "# Judge well" and p["has_guidelines"]
    assert p["state"] == "item" and [o["slot"] for o in p["item"]["outputs"]] == ["A", "B"]
    assert p["progress"] == {"done": 0, "total": 4} and p["mine"] == [p["item"]["item_id"]] and p["position"] == 0
    assert [s["id"] for s in p["severities"]] == ["minor", "major", "critical"] and p["has_spans"]
    seen = [p]
    item = p["item"]["item_id"]
    source = p["item"]["source"]
    judgement = {"A": {"score": 80, "spans": [{"start": 0, "end": 3, "side": "input", "category": "",
                                               "severity": "major"}]}, "B": {"score": 40}, "comment": "ok"}
    p = act(store, cid, "alice", {"do": "submit", "item_id": item, "judgement": judgement, "seconds": 12.5})
    seen.append(p)
    assert p["kind"] == "info" and "Saved your judgement" in p["message"] and p["forget"] == item
    assert p["progress"]["done"] == 1 and p["item"]["item_id"] != item and p["position"] == 1
    # back to the first: its judgement comes back, by slot, as saved
    back = act(store, cid, "alice", {"do": "item", "item_id": item})
    seen.append(back)
    assert back["judgement"]["outputs"]["A"]["score"] == 80 and back["comment"] == "ok"
    assert back["judgement"]["outputs"]["A"]["spans"][0]["end"] == 3 and source[:3] == "Der"
    assert back["position"] == 0 and back["mine"] == [item, p["item"]["item_id"]]
    # an incomplete judgement is refused and the same item comes back with the message
    second = p["item"]["item_id"]
    p = act(store, cid, "alice", {"do": "submit", "item_id": second, "judgement": {"A": {"score": 10}},
                                  "seconds": 3})
    seen.append(p)
    assert p["kind"] == "error" and "Not saved" in p["message"] and "output B" in p["message"]
    assert p["item"]["item_id"] == second and p["forget"] == ""
    # skip with a reason: the next item, the skipped one out of my list
    p = act(store, cid, "alice", {"do": "skip", "item_id": second, "reason": "not my language"})
    seen.append(p)
    assert "Skipped" in p["message"] and second not in p["mine"] and p["forget"] == second
    no_reason = act(store, cid, "alice", {"do": "skip", "item_id": p["item"]["item_id"], "reason": ""})
    assert no_reason["kind"] == "error" and "say why" in no_reason["message"]
    row = store.read("SELECT j.seconds, j.annotator FROM campaign_judgements j JOIN campaign_items i ON "
                     "i.campaign_id = j.campaign_id AND i.item_id = j.item_id WHERE i.public_id=?", (item,))[0]
    assert row["seconds"] == 12.5 and row["annotator"] == "alice"
    shown = " ".join(T.screen_html(x) for x in seen)
    assert not any(s in shown for s in SYSTEMS)      # blind: no system name in anything the page gets


def test_done_empty_and_refused_screens(store, tmp_path):
    cid = make(store, tmp_path, overlap=1).campaign_id
    assert T.judge_open(store, OPEN, None, "alice").screen["message"] == T.NO_CAMPAIGN
    nobody = T.judge_open(store, OPEN, cid, "  ").screen
    assert nobody["state"] == "error" and "annotator name" in nobody["message"]
    assert "no campaign" in T.judge_open(store, OPEN, "nope", "alice").screen["message"]
    for _ in range(4):
        p = T.judge_open(store, OPEN, cid, "alice").screen
        item = p["item"]["item_id"]
        act(store, cid, "alice", {"do": "submit", "item_id": item, "seconds": 1,
                                  "judgement": {"A": {"score": 50}, "B": {"score": 60}}})
    done = T.judge_open(store, OPEN, cid, "alice").screen
    assert done["state"] == "done" and "Done" in done["message"] and done["progress"] == {"done": 4, "total": 4}
    other = T.judge_open(store, OPEN, cid, "bob").screen      # overlap 1: nothing left for bob
    assert other["state"] == "done" and other["progress"]["total"] == 0
    theirs = act(store, cid, "bob", {"do": "item", "item_id": item})
    assert theirs["kind"] == "error" and "not assigned to you" in theirs["message"]


def test_protected_uses_the_account_not_the_typed_name(store, tmp_path):
    cid = make(store, tmp_path, ident=ADMIN).campaign_id
    p = T.judge_open(store, ALICE, cid, "mallory").screen
    assert p["annotator"] == "alice"
    assert C.my_items(store, cid, ALICE) == [p["item"]["item_id"]]
    signed_out = T.judge_open(store, Identity(protected=True, method="password"), cid, "alice").screen
    assert signed_out["state"] == "error" and "log in" in signed_out["message"]


def test_results_tables_for_admins_only(store, tmp_path):
    cid = make(store, tmp_path, ident=ADMIN).campaign_id
    for who in ("alice", "bob"):
        ident = Identity(who, protected=True)
        while (p := T.judge_open(store, ident, cid, "").screen)["state"] == "item":
            act(store, cid, "", {"do": "submit", "item_id": p["item"]["item_id"], "seconds": 2,
                                 "judgement": {"A": {"score": 70}, "B": {"score": 30}}}, ident)
    r = T.show_results(store, ADMIN, cid)
    assert r.kind == "warn" and "8 judgement(s) of 4 item(s)" in r.message and "30" in r.message
    assert set(r.systems["system"]) == set(SYSTEMS) and len(r.annotators) == 2
    assert list(r.agreement["name"]) == ["esa"] and len(r.win_rates) == 1
    refused = T.show_results(store, ALICE, cid)
    assert refused.kind == "error" and "for admins" in refused.message and refused.systems.empty
    assert T.show_results(store, ADMIN, "").kind == "warn"


def test_payload_per_protocol(store, tmp_path):
    mqm = make(store, tmp_path, protocol="mqm").campaign_id
    p = T.judge_open(store, OPEN, mqm, "alice").screen
    assert p["category_required"] and "accuracy" in [c["id"] for c in p["categories"]]
    pair = make(store, tmp_path, protocol="pairwise").campaign_id
    p = T.judge_open(store, OPEN, pair, "alice").screen
    assert p["compares"] and p["has_spans"]
    out = act(store, pair, "alice", {"do": "submit", "item_id": p["item"]["item_id"], "seconds": 1,
                                  "judgement": {"preference": "B", "spans": []}})
    assert out["kind"] == "info"
    label = make(store, tmp_path, protocol="label", labels="positive, negative").campaign_id
    assert T.judge_open(store, OPEN, label, "alice").screen["labels"] == ["positive", "negative"]


def test_screen_html_escapes_the_payload():
    payload = {"item": {"source": '<script>alert("x")</script> & "quotes"'}}
    out = T.screen_html(payload)
    assert "<script" not in out
    data = re.search(r'data-payload="([^"]*)"', out).group(1)
    assert json.loads(html.unescape(data)) == payload


def test_the_tab_builds_with_its_act_event(store):
    ctx = AppContext.create(Settings(), load_assets())
    with gr.Blocks() as blocks:
        v = T.build(ctx, store)
    assert "trigger(\"act\")" in v.judge.screen.js_on_load
    names = {getattr(d.fn, "__name__", "") for d in blocks.fns.values()}
    assert {"campaign_open", "campaign_act", "campaign_create", "campaign_results"} <= names
