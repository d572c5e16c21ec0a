"""Evaluation campaigns (app.annotation.campaigns) on a real SQLite file and a real PostgreSQL server (the
`databases` fixture): assignment with overlap, blinding, attention checks, results, export and import, concurrency,
and every bad input of issue 22 refused with nothing changed."""
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.annotation import campaigns as C
from app.annotation.batch import BatchInput, create_job, run_batch
from app.annotation.campaign_api import endpoints
from app.annotation.campaign_exchange import export_campaign, import_campaign_export
from app.annotation.rights import Identity, Refused
from app.annotation.store import AnnotationStore
from app.settings import Settings

SYSTEMS = ("Zephyr-MT", "Quokka-NMT")           # names that appear nowhere in the texts
ADMIN = Identity("root", admin=True, protected=True)
PEOPLE = {who: Identity(who, protected=True) for who in ("alice", "bob", "carol")}
SECONDS = {"alice": 3.0, "bob": 5.0, "carol": 7.0}
Z = 1.959963984540054


def items_file(tmp_path, n=6, name="items.jsonl", **extra):
    rows = [{"id": f"s{i}", "source": f"Der Satz Nummer {i} hat einige Wörter.", "domain": "news",
             "output_" + SYSTEMS[0]: f"Sentence number {i} has a few words.",
             "output_" + SYSTEMS[1]: f"The sentence {i} has some words in it."} | extra for i in range(n)]
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def store(databases):
    with AnnotationStore(databases("camp.db")) as s:
        yield s


def counts(store):
    return {t: store.read(f"SELECT COUNT(*) FROM {t}")[0][0] for t in
            ("campaigns", "campaign_items", "campaign_assignments", "campaign_judgements")}


def internal(store, public_id):
    """The file's id of the item an annotator was shown as `public_id` (what the test knows, they do not)."""
    return store.read("SELECT item_id FROM campaign_items WHERE public_id=?", (public_id,))[0][0]


def public(store, cid, item_id):
    return store.read("SELECT public_id FROM campaign_items WHERE campaign_id=? AND item_id=?", (cid, item_id))[0][0]


def esa_judgement(view, index_of):
    """Zephyr 70 + i, Quokka 50 + i, whoever judges: the score depends only on the system (read by the test
    from the text, as the annotator cannot) and the item."""
    i = index_of(view["item_id"])
    return {o["slot"]: {"score": (70 if "has a few" in o["text"] else 50) + i} for o in view["outputs"]}


def judge_all(store, cid, people, judge, answers=None):
    """Every annotator asks for items in turn until each is done; returns every answer they received."""
    answers = [] if answers is None else answers
    active = list(people)
    while active:
        for who in list(active):
            view = C.next_item(store, cid, PEOPLE[who])
            answers.append(view)
            if view["done"]:
                active.remove(who)
                continue
            answers.append(C.get_item(store, cid, view["item_id"], PEOPLE[who]))
            C.submit(store, cid, view["item_id"], judge(view), SECONDS[who], PEOPLE[who])
    return answers


def test_overlap_blinding_progress_results_and_exchange(store, databases, tmp_path):
    spec = C.CampaignSpec("de-en news", "summarization", "esa", guidelines="# Judge the meaning", overlap=2)
    made = C.create_campaign(store, spec, items_file(tmp_path), ident=ADMIN)
    assert (made["items"], made["checks"], made["systems"], made["blind"]) == (6, 0, list(SYSTEMS), True)
    cid = made["id"]
    first = C.next_item(store, cid, PEOPLE["alice"])
    assert C.next_item(store, cid, PEOPLE["alice"])["item_id"] == first["item_id"]    # not submitted: again
    assert first["guidelines"] == "# Judge the meaning" and first["progress"] == {"done": 0, "total": 6}
    assert [c["id"] for c in first["categories"]][:2] == ["accuracy", "fluency"]       # summarization's only
    answers = judge_all(store, cid, PEOPLE, lambda v: esa_judgement(v, lambda i: int(internal(store, i)[1:])), [first])
    text = json.dumps(answers, ensure_ascii=False)
    assert not any(name in text for name in SYSTEMS) and '"system"' not in text

    rows = C.assignments(store, cid, ADMIN)["assignments"]
    by_item = {}
    for r in rows:
        assert r["submitted_at"] and not r["skipped"]
        by_item.setdefault(r["item_id"], []).append(r["annotator"])
    assert sorted(by_item) == [f"s{i}" for i in range(6)]
    assert all(len(w) == 2 == len(set(w)) for w in by_item.values())
    assert store.read("SELECT COUNT(*) FROM campaign_judgements")[0][0] == 12
    done = {who: C.next_item(store, cid, PEOPLE[who]) for who in PEOPLE}
    for who, view in done.items():
        n = sum(who in w for w in by_item.values())
        assert view["done"] and view["progress"] == {"done": n, "total": n}

    res = C.results(store, cid, ADMIN)
    scores = {(s["system"], s["score"]): s for s in res["systems"]}
    zephyr, quokka = scores[SYSTEMS[0], "esa"], scores[SYSTEMS[1], "esa"]
    assert (zephyr["items"], zephyr["judgements"], zephyr["mean"]) == (6, 12, 72.5)    # 70 + mean(0..5)
    assert quokka["mean"] == 52.5 and quokka["ci_low"] < 52.5 < quokka["ci_high"]
    win, = res["win_rates"]
    assert (win["system_x"], win["x_wins"], win["y_wins"], win["judgements"]) == ("Quokka-NMT", 0, 12, 12)
    assert win["ci_high"] == pytest.approx(1 - 12 / (12 + Z * Z))
    alpha, = res["agreement"]
    assert (alpha["alpha"], alpha["items"], alpha["metric"]) == (1.0, 12, "interval")
    assert "below 30" in alpha["warning"]
    for a in res["annotators"]:
        assert a["median_seconds"] == SECONDS[a["annotator"]] and a["agreement_alpha"] == 1.0
        assert a["items_done"] == sum(a["annotator"] in w for w in by_item.values())

    mine = export_campaign(store, cid, PEOPLE["bob"], tmp_path / "bob.jsonl").read_text(encoding="utf-8")
    assert "bob" in mine and "alice" not in mine and not any(name in mine for name in SYSTEMS)
    for fmt in ("jsonl", "csv"):
        one = export_campaign(store, cid, ADMIN, tmp_path / f"one.{fmt}")
        with AnnotationStore(databases(f"fresh-{fmt}.db")) as fresh:
            assert import_campaign_export(fresh, one, ADMIN)["judgements"] == 12
            two = export_campaign(fresh, cid, ADMIN, tmp_path / f"two.{fmt}")
        assert one.read_bytes() == two.read_bytes() and all(n in one.read_text(encoding="utf-8-sig")
                                                            for n in SYSTEMS)


def test_attention_checks_are_scored(store, tmp_path):
    path = items_file(tmp_path, n=4)
    spec = C.CampaignSpec("checks", "summarization", "esa", check_fraction=0.5, seed=7)
    made = C.create_campaign(store, spec, path, ident=ADMIN)
    cid = made["id"]
    assert made["checks"] == 2
    checks = {r["item_id"]: json.loads(r["expected"]) for r in
              store.read("SELECT item_id, expected FROM campaign_items WHERE check_kind='degraded'")}
    for item_id, key in checks.items():
        original = store.read("SELECT outputs FROM campaign_items WHERE item_id=?", (key["of"],))[0][0]
        copy = store.read("SELECT outputs FROM campaign_items WHERE item_id=?", (item_id,))[0][0]
        assert set(key["stretches"]) == set(SYSTEMS) and json.loads(copy) != json.loads(original)
    failing = sorted(checks)[0]
    seen, alice = [], PEOPLE["alice"]
    while not (view := C.next_item(store, cid, alice))["done"]:
        iid = internal(store, view["item_id"])
        assert iid != view["item_id"]       # the file's ids and the checks' are never shown
        if iid in checks:       # a copy comes only after its original was judged
            assert checks[iid]["of"] in seen
            score = 90 if iid == failing else 20
            C.submit(store, cid, view["item_id"], {o["slot"]: {"score": score} for o in view["outputs"]}, 1, alice)
        else:
            seen.append(iid)
            C.submit(store, cid, view["item_id"], {o["slot"]: {"score": 80} for o in view["outputs"]}, 1, alice)
    assert view["progress"] == {"done": 6, "total": 6}
    me, = C.results(store, cid, ADMIN)["annotators"]
    assert (me["checks"], me["checks_passed"], me["check_pass_rate"]) == (2, 1, 0.5)
    assert C.results(store, cid, ADMIN)["items"] == 4       # the checks stay out of the system scores


def test_expected_answers_pairwise_edits_and_skips(store, tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("id,text,system,output,expected\n"
                    "a,Erster Satz.,Zephyr-MT,First sentence.,\n"
                    "a,Erster Satz.,Quokka-NMT,Sentence one.,\n"
                    "b,Zweiter Satz.,Zephyr-MT,Second sentence.,\"{\"\"preference\"\": \"\"tie\"\"}\"\n"
                    "b,Zweiter Satz.,Quokka-NMT,Sentence two.,\"{\"\"preference\"\": \"\"tie\"\"}\"\n",
                    encoding="utf-8")
    made = C.create_campaign(store, C.CampaignSpec("pairs", "summarization", "pairwise", overlap=2), path,
                             ident=ADMIN)
    assert made["blind"] is True and made["items"] == 2
    cid, alice, bob = made["id"], PEOPLE["alice"], PEOPLE["bob"]
    for who in (alice, bob):
        while not (view := C.next_item(store, cid, who))["done"]:
            zephyr = next(o["slot"] for o in view["outputs"] if o["text"].startswith(("First", "Second")))
            pref = "tie" if internal(store, view["item_id"]) == "b" and who is alice else zephyr
            C.submit(store, cid, view["item_id"], {"preference": pref, "comment": "ok"}, 2, who)
    a = public(store, cid, "a")
    old = C.get_item(store, cid, a, alice)
    assert old["judgement"]["preference"] in ("A", "B") and old["comment"] == "ok"
    again = C.submit(store, cid, a, {"preference": "tie"}, 1, alice)
    assert "version 1" in again["message"]
    assert store.read("SELECT COUNT(*) FROM campaign_judgements WHERE annotator='alice'")[0][0] == 2
    assert C.get_item(store, cid, a, alice)["judgement"]["preference"] == "tie"
    assert C.get_item(store, cid, public(store, cid, "a"), alice)["seconds"] == 3.0
    assert len(C.judgement_versions(store, again["id"])) == 1
    res = C.results(store, cid, ADMIN)
    win, = res["win_rates"]
    # item b is an attention check (an expected answer): only item a counts, alice's tie and bob's Zephyr
    assert (win["system_x"], win["x_wins"], win["y_wins"], win["ties"]) == ("Quokka-NMT", 0, 1, 1)
    rates = {a["annotator"]: a["check_pass_rate"] for a in res["annotators"]}
    assert rates == {"alice": 1.0, "bob": 0.0}
    carol = PEOPLE["carol"]
    assert C.next_item(store, cid, carol)["done"]      # overlap 2 reached everywhere


def test_skip_frees_the_item_for_someone_else(store, tmp_path):
    cid = C.create_campaign(store, C.CampaignSpec("s", "summarization", "da"), items_file(tmp_path, n=1),
                            ident=ADMIN)["id"]
    alice, bob = PEOPLE["alice"], PEOPLE["bob"]
    view = C.next_item(store, cid, alice)
    with pytest.raises(ValueError, match="say why"):
        C.skip(store, cid, view["item_id"], " ", alice)
    C.skip(store, cid, view["item_id"], "not my language", alice)
    assert C.next_item(store, cid, alice)["done"]
    assert C.next_item(store, cid, bob)["item_id"] == view["item_id"]
    with pytest.raises(ValueError, match="Not saved: you skipped item"):
        C.submit(store, cid, view["item_id"], {"A": {"score": 5}, "B": {"score": 6}}, 1, alice)


def test_a_campaign_from_a_batch_job(store):
    job = create_job(store, [BatchInput("Ein Text."), BatchInput("Noch einer.")], task="summarization",
                     source="in.csv", settings={"model_id": "google/mt5-small"})
    run_batch(store, job.id, process=lambda row: row.text.upper())
    made = C.create_campaign(store, C.CampaignSpec("job", "summarization", "likert"), job_id=job.id, ident=ADMIN)
    assert (made["items"], made["systems"], made["blind"]) == (2, ["google/mt5-small"], False)
    view = C.next_item(store, made["id"], PEOPLE["alice"])
    text = {"1": "EIN TEXT.", "2": "NOCH EINER."}[internal(store, view["item_id"])]
    assert view["outputs"] == [{"slot": "A", "text": text, "system": "google/mt5-small"}]
    C.submit(store, made["id"], view["item_id"], {"rating": 4}, 1.5, PEOPLE["alice"])


def test_next_item_never_exceeds_the_overlap_under_concurrency(databases, tmp_path):
    """Eight annotators at once, half through one store object and half through another (two app instances on
    one database): every item ends with exactly two judgements."""
    where = databases("race.db")
    with AnnotationStore(where) as one, AnnotationStore(where) as two:
        cid = C.create_campaign(one, C.CampaignSpec("race", "summarization", "da", overlap=2),
                                items_file(tmp_path, n=5), ident=ADMIN)["id"]
        barrier = threading.Barrier(8)

        def work(n):
            store, who = (one, two)[n % 2], Identity(f"a{n}", protected=True)
            barrier.wait()
            while not (view := C.next_item(store, cid, who))["done"]:
                C.submit(store, cid, view["item_id"], {o["slot"]: {"score": 50} for o in view["outputs"]}, 1, who)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(work, range(8)))
        taken = one.read("SELECT item_id, COUNT(*), COUNT(DISTINCT annotator) FROM campaign_judgements "
                         "GROUP BY item_id")
        assert sorted((r[0], r[1], r[2]) for r in taken) == [(f"s{i}", 2, 2) for i in range(5)]


# ---------------------------------------------------------------------------------------------------------------
# Bad input: a clear message, nothing changed


def test_bad_judgements_are_refused_and_change_nothing(store, tmp_path):
    cid = C.create_campaign(store, C.CampaignSpec("bad", "summarization", "esa", overlap=2),
                            items_file(tmp_path, n=2), ident=ADMIN)["id"]
    alice, bob = PEOPLE["alice"], PEOPLE["bob"]
    view = C.next_item(store, cid, alice)
    before = counts(store)
    with pytest.raises(ValueError, match="Not saved: no judgement for output B"):
        C.submit(store, cid, view["item_id"], {"A": {"score": 70}}, 1, alice)
    with pytest.raises(ValueError, match="Not saved: output A: missing `score`"):
        C.submit(store, cid, view["item_id"], {"A": {}, "B": {"score": 1}}, 1, alice)
    with pytest.raises(ValueError, match="Not saved: item 's9' is not assigned to you"):
        C.submit(store, cid, "s9", {"A": {"score": 1}, "B": {"score": 1}}, 1, alice)
    with pytest.raises(ValueError, match="Not saved: item .* is not assigned to you \\(bob\\)"):
        C.submit(store, cid, view["item_id"], {"A": {"score": 1}, "B": {"score": 1}}, 1, bob)
    with pytest.raises(ValueError, match="Not saved: seconds must be"):
        C.submit(store, cid, view["item_id"], {"A": {"score": 1}, "B": {"score": 1}}, -1, alice)
    with pytest.raises(ValueError, match="not assigned to you"):
        C.get_item(store, cid, view["item_id"], bob)
    with pytest.raises(Refused, match="Not saved: Not signed in"):
        C.submit(store, cid, view["item_id"], {"A": {"score": 1}, "B": {"score": 1}}, 1,
                 Identity(protected=True, method="password"))
    assert counts(store) == before
    C.submit(store, cid, view["item_id"], {"A": {"score": 1}, "B": {"score": 1}}, 1, alice)
    C.submit(store, cid, view["item_id"], {"A": {"score": 2}, "B": {"score": 2}}, 1, alice)   # an edit
    assert store.read("SELECT COUNT(*) FROM campaign_judgements")[0][0] == 1      # never a second judgement


@pytest.mark.parametrize("rows, spec, words", [
    ([{"source": "x", "reference": "y"}], {}, "has no outputs"),
    ([{"source": "x", "output": "y"}], {"overlap": 0}, "overlap must be a whole number of at least 1"),
    ([{"output": "y"}], {}, "has no `source` column"),
    ([{"source": "x", "output_a": "y"}, {"source": "z", "output_a": 5}], {}, "line 2, column `output_a`: must be text"),
    ([{"source": "x", "output_a": "y"}, {"source": "", "output_a": "y"}], {}, "line 2, column `source`: empty"),
    ([{"id": 1, "source": "x", "output": "y"}, {"id": "1", "source": "z", "output": "y"}], {},
     "line 2, column `id`: '1' is already the id of items.jsonl line 1"),
    ([{"source": "x", "output_a": "1", "output_b": "2", "output_c": "3"}], {"protocol": "pairwise"},
     "compares two systems; the items have 3"),
    ([{"source": "x", "output": "y"}], {"protocol": "label"}, "picks from the campaign's labels"),
    ([{"source": "x", "output": "y"}], {"protocol": "bws"}, "unknown protocol 'bws'"),
])
def test_bad_campaigns_are_refused_whole(store, tmp_path, rows, spec, words):
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    args = {"name": "bad", "task": "summarization", "protocol": "esa"} | spec
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        C.create_campaign(store, C.CampaignSpec(**args), path, ident=ADMIN)
    assert counts(store)["campaigns"] == 0


def test_bad_files_name_the_line_and_column(store, tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"source": "x", "output": "y"}\n\n{"source": "x", "output": }\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken.jsonl line 3: not valid JSON \(Expecting value at column 27\)"):
        C.create_campaign(store, C.CampaignSpec("b", "summarization", "esa"), broken, ident=ADMIN)
    short = tmp_path / "short.csv"
    short.write_text('source,output\n"a\nb",fine\nonly one cell\n', encoding="utf-8")
    with pytest.raises(ValueError, match="short.csv line 4: 1 cells for 2 columns"):
        C.create_campaign(store, C.CampaignSpec("b", "summarization", "esa"), short, ident=ADMIN)
    long = tmp_path / "long.csv"
    long.write_text("id,source,system,output\n1,a,s1,x\n1,a,s2,y\n2,b,s1,z\n", encoding="utf-8")
    with pytest.raises(ValueError, match="long.csv line 4: this item has no output of system 's2'"):
        C.create_campaign(store, C.CampaignSpec("b", "summarization", "esa"), long, ident=ADMIN)
    assert counts(store)["campaigns"] == 0


def test_only_admins_create_and_read_results(store, tmp_path):
    with pytest.raises(Refused, match="Creating a campaign is for admins"):
        C.create_campaign(store, C.CampaignSpec("x", "summarization", "esa"), items_file(tmp_path),
                          ident=PEOPLE["alice"])
    assert counts(store)["campaigns"] == 0
    cid = C.create_campaign(store, C.CampaignSpec("x", "summarization", "esa"), items_file(tmp_path),
                            ident=ADMIN)["id"]
    with pytest.raises(Refused, match="Reading a campaign's results is for admins"):
        C.results(store, cid, PEOPLE["alice"])
    with pytest.raises(Refused, match="assignments is for admins"):
        C.assignments(store, cid, PEOPLE["alice"])
    with pytest.raises(ValueError, match="no campaign with id 'nope'"):
        C.next_item(store, "nope", PEOPLE["alice"])


# ---------------------------------------------------------------------------------------------------------------
# The API functions (as gr.api calls them; the request carries the signed-in user)


class FakeRequest:
    def __init__(self, username):
        self.username = username


def test_api_endpoints(tmp_path, monkeypatch):
    from gradio import Error

    settings = Settings(sign_in="password", users={"root": "pw", "alice": "pw"}, admins=frozenset({"root"}),
                        files_dir=tmp_path / "files")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))   # where Gradio keeps the clients' uploads
    (tmp_path / "uploads" / "abc").mkdir(parents=True)
    path = items_file(tmp_path / "uploads" / "abc", n=2)
    with AnnotationStore(tmp_path / "api.db") as store:
        eps = endpoints(store, settings)
        root, alice = FakeRequest("root"), FakeRequest("alice")
        with pytest.raises(Error, match="Not created: send the items file itself"):
            eps["campaign_create"]("n", "summarization", "esa", {"path": str(items_file(tmp_path, name="x.jsonl"))},
                                   request=root)
        with pytest.raises(Error, match="Not created: Creating a campaign is for admins"):
            eps["campaign_create"]("n", "summarization", "esa", {"path": str(path)}, request=alice)
        made = eps["campaign_create"]("n", "summarization", "esa", {"path": str(path), "orig_name": "mine.jsonl"},
                                      overlap=1, request=root)
        assert made["items"] == 2
        view = eps["campaign_next"](made["id"], request=alice)
        assert not any(n in json.dumps(view) for n in SYSTEMS)
        with pytest.raises(Error, match="Not saved: the judgement is not valid JSON"):
            eps["campaign_submit"](made["id"], view["item_id"], "{nope", 1.0, request=alice)
        saved = eps["campaign_submit"](made["id"], view["item_id"], '{"A": {"score": 60}, "B": {"score": 40}}',
                                       2.5, request=alice)
        assert saved["message"].startswith("Saved")
        with pytest.raises(Error, match="is for admins"):
            eps["campaign_results"](made["id"], request=alice)
        assert eps["campaign_results"](made["id"], request=root)["judgements"] == 1
        mine = eps["campaign_export"](made["id"], "csv", request=alice)
        text = open(mine.path, encoding="utf-8-sig").read()
        assert "alice" in text and not any(n in text for n in SYSTEMS)
        everyone = eps["campaign_export"](made["id"], "jsonl", request=root)
        assert all(n in open(everyone.path, encoding="utf-8").read() for n in SYSTEMS)


def test_fixed_batches_give_whole_batches_and_keep_the_overlap(store, tmp_path):
    with pytest.raises(ValueError, match="batch_size must be a whole number: 0 assigns items one at a time"):
        C.create_campaign(store, C.CampaignSpec("b", "summarization", "esa", batch_size=-1), items_file(tmp_path),
                          ident=ADMIN)
    spec = C.CampaignSpec("batches", "summarization", "esa", overlap=2, batch_size=2)
    cid = C.create_campaign(store, spec, items_file(tmp_path, n=6), ident=ADMIN)["id"]
    first = C.next_item(store, cid, PEOPLE["alice"])
    held = store.read("SELECT item_id FROM campaign_assignments WHERE annotator='alice' ORDER BY item_id")
    a, b = (int(r[0][1:]) for r in held)     # the whole batch at once, its first item first
    assert a % 2 == 0 and b == a + 1 and internal(store, first["item_id"]) == f"s{a}"
    judge_all(store, cid, PEOPLE, lambda v: esa_judgement(v, lambda i: int(internal(store, i)[1:])), [first])
    rows = store.read("SELECT annotator, item_id FROM campaign_judgements WHERE campaign_id=?", (cid,))
    per_item, per_person = {}, {}
    for who, item in rows:
        per_item.setdefault(item, []).append(who)
        per_person.setdefault(who, set()).add(int(item[1:]) // 2)
    assert sorted(per_item) == [f"s{i}" for i in range(6)]
    assert all(len(w) == 2 == len(set(w)) for w in per_item.values())
    for who, batches in per_person.items():   # nobody holds part of a batch
        mine = {int(item[1:]) for w, item in rows if w == who}
        assert mine == {i for b in batches for i in (2 * b, 2 * b + 1)}, (who, mine)
