"""Side-by-side comparisons on a real SQLite file: save, refuse bad input (nothing saved), soft delete, export and
re-import in CSV, JSONL and Parquet with every field equal, win rates and preference agreement against hand
computations."""
import dataclasses
import json
import random
import sqlite3

import pytest

from app.annotation.agreement import preference_agreement, wilson_interval, win_rate_frame, win_rates
from app.annotation.comparisons import (COLUMNS, Comparison, System, compare_rows, comparison_for_row,
                                        create_compare_job, delete_comparison, export_comparisons, get_comparison,
                                        get_compare_job, import_comparisons, judge_row, query_comparisons,
                                        restore_comparison, run_compare_job, save_comparison, to_flat)
from app.annotation.batch import BatchInput
from app.annotation.rights import Identity, Refused
from app.annotation.store import AnnotationStore
from app.annotation.tabs.compare import check_pair, delete_as, pair_comparison, run_pair
from app.errors import UserError
from app.main import prepare
from app.models import ModelRequest
from app.settings import Settings
from app.tasks import Decoding

BEAM = System("google/mt5-small", "main", "mt5", "float32", {"num_beams": 4, "max_new_tokens": 64})
SAMPLE = System("google/mt5-small", "main", "mt5", "float32", {"do_sample": True, "seed": 0, "max_new_tokens": 64})
UMT5 = System("google/umt5-small", "main", "umt5", "bfloat16", {"num_beams": 4, "max_new_tokens": 64})

ARABIC_IN = "قالت الحكومة إن المشروع سينتهي في عام ٢٠٣٠. 東京でも発表された 🎉"
ARABIC_A = "المشروع ينتهي ٢٠٣٠ 🎉"
ARABIC_B = "الحكومة: المشروع سينتهي في عام ٢٠٣٠."


def make(**kw) -> Comparison:
    base = dict(task="summarization", input=ARABIC_IN, system_a=BEAM, output_a=ARABIC_A, system_b=SAMPLE,
                output_b=ARABIC_B, preference="B", annotator="Amina", protocol="esa", comment="B keeps «الحكومة»",
                app_version="0.1",
                spans=[{"start": 0, "end": 7, "side": "A", "category": "", "severity": "major"},
                       {"start": 19, "end": 20, "side": "A", "category": "fluency", "severity": "minor"},
                       {"start": 9, "end": 16, "side": "B", "category": "", "severity": "minor"},
                       {"start": 0, "end": 7, "side": "input", "category": "omission", "severity": "critical"}])
    return Comparison(**(base | kw))


@pytest.fixture
def store(tmp_path):
    with AnnotationStore(tmp_path / "ann.db") as s:
        yield s


def test_save_get_owner_and_soft_delete(store):
    cmp_id = save_comparison(store, make(), owner="amina@hf")
    got = get_comparison(store, cmp_id)
    assert got.owner == "amina@hf" and got.preference == "B" and got.system_b == SAMPLE
    assert got.output_a == ARABIC_A and got.input == ARABIC_IN
    assert [(s["side"], got.__dict__[{"A": "output_a", "B": "output_b", "input": "input"}[s["side"]]]
             [s["start"]:s["end"]]) for s in got.spans] == [("A", "المشروع"), ("A", "🎉"), ("B", "المشروع"),
                                                            ("input", "قالت ال")]
    # the same item whatever the order shown
    flipped = save_comparison(store, make(system_a=SAMPLE, output_a=ARABIC_B, system_b=BEAM, output_b=ARABIC_A,
                                          preference="A", spans=[], annotator="Bo"))
    assert get_comparison(store, flipped).item_key == got.item_key
    assert delete_comparison(store, cmp_id, by="admin") is True
    assert get_comparison(store, cmp_id) is None and delete_comparison(store, cmp_id, by="admin") is False
    row = store.read("SELECT deleted_by, deleted_at FROM comparisons WHERE id=?", (cmp_id,))[0]
    assert row[0] == "admin" and row[1].endswith("Z")
    assert [c.id for c in query_comparisons(store)] == [flipped]
    assert restore_comparison(store, cmp_id) and get_comparison(store, cmp_id) == got


@pytest.mark.parametrize("change, message", [
    (dict(spans=[{"start": 0, "end": 99, "side": "A", "category": "", "severity": "major"}]),
     "outside the A"),
    (dict(spans=[{"start": 0, "end": 5, "side": "B", "category": "fluency", "severity": "major"},
                 {"start": 3, "end": 9, "side": "B", "category": "fluency", "severity": "minor"}]),
     "overlaps span 1 .* same category 'fluency'"),
    (dict(spans=[{"start": 0, "end": 5, "side": "B", "category": "", "severity": "fatal"}]),
     "unknown severity 'fatal'"),
    (dict(system_b=BEAM), "A and B are the same system"),
    (dict(task="classification", system_b=dataclasses.replace(BEAM, decoding={"num_beams": 1})),
     "A and B are the same system"),          # a task that does not decode: the decoding settings do not count
    (dict(preference="C"), "preference 'C' is not one of A, B, tie, both_bad"),
    (dict(annotator=" "), "annotator name is empty"),
    (dict(spans=[{"start": 0, "end": 2, "side": "output", "category": "", "severity": "minor"}]),
     "side 'output' is not one of A, B, input"),
])
def test_bad_input_is_refused_and_nothing_saved(store, change, message):
    with pytest.raises(ValueError, match=message):
        save_comparison(store, make(**change))
    assert store.read("SELECT COUNT(*) FROM comparisons")[0][0] == 0


def test_two_models_and_two_decodings_are_accepted(store):
    save_comparison(store, make(system_b=UMT5))
    save_comparison(store, make(task="classification", system_a=BEAM, system_b=UMT5, spans=[]))
    assert len(query_comparisons(store)) == 2


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_export_and_reimport_keep_every_field(tmp_path, store, fmt):
    ids = [save_comparison(store, make(), owner="amina"),
           save_comparison(store, make(system_b=UMT5, preference="both_bad", protocol="mqm", comment="=SUM(A1)\r\n'x",
                                       spans=[{"start": 0, "end": 7, "side": "B", "category": "accuracy",
                                               "severity": "major"}])),
           save_comparison(store, make(preference="tie", spans=[], protocol="", input="-Hello\tworld",
                                       output_a="+1", output_b="@you"))]
    before = [get_comparison(store, i) for i in ids]
    path = export_comparisons(before, tmp_path / f"cmp.{fmt}")
    with AnnotationStore(tmp_path / "other.db") as other:
        result = import_comparisons(other, path)
        assert (result.added, result.updated, result.skipped) == (3, 0, 0)
        after = [get_comparison(other, i) for i in ids]
        assert [to_flat(c) for c in after] == [to_flat(c) for c in before]
        assert import_comparisons(other, path).skipped == 3      # again: nothing new
    if fmt == "jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert list(rows[0]) == list(COLUMNS) and rows[1]["spans"][0]["side"] == "B"


def test_import_is_all_or_nothing(tmp_path, store):
    good = get_comparison(store, save_comparison(store, make()))
    rows = [to_flat(good), to_flat(dataclasses.replace(good, id="x2", spans=[
        {"start": 0, "end": 500, "side": "A", "category": "", "severity": "minor"}]))]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    with AnnotationStore(tmp_path / "fresh.db") as fresh:
        with pytest.raises(ValueError, match=r"bad.jsonl line 2: .*outside the A.*nothing was imported"):
            import_comparisons(fresh, path)
        assert fresh.read("SELECT COUNT(*) FROM comparisons")[0][0] == 0


def judged(preference: str, x_shown_as: str, annotator: str = "a", item: int = 0) -> Comparison:
    """A comparison of X = BEAM and Y = UMT5 on input `item`, X shown on side `x_shown_as`; `preference` in
    terms of the systems ("X", "Y", "tie", "both_bad")."""
    x, y = ("A", "B") if x_shown_as == "A" else ("B", "A")
    shown = {x: (BEAM, f"beam {item}"), y: (UMT5, f"umt5 {item}")}
    pref = {"X": x, "Y": y}.get(preference, preference)
    return make(input=f"input {item}", system_a=shown["A"][0], output_a=shown["A"][1], system_b=shown["B"][0],
                output_b=shown["B"][1], preference=pref, spans=[], annotator=annotator)


def test_win_rates_match_a_hand_computation(store):
    """7 wins for X, 3 for Y, 2 ties, 1 both bad, X shown as A or B at random: X's rate over the 10 decisive
    judgements is 0.7; Wilson's 95% interval, by hand: z = 1.96, centre = (0.7 + z²/20) / (1 + z²/10) = 0.6446,
    half-width = z·sqrt(0.021 + z²/400) / (1 + z²/10) = 0.2477, so 0.3968–0.8922."""
    rng = random.Random(3)
    prefs = ["X"] * 7 + ["Y"] * 3 + ["tie"] * 2 + ["both_bad"]
    for i, p in enumerate(prefs):
        save_comparison(store, judged(p, rng.choice("AB"), item=i))
    (row,) = win_rates(query_comparisons(store))
    assert row.system_x == "mt5-small" and row.system_y == "umt5-small"    # X: the smaller key, fixed
    assert (row.judgements, row.x_wins, row.y_wins, row.ties, row.both_bad) == (13, 7, 3, 2, 1)
    assert row.x_win_rate == pytest.approx(0.7)
    assert (row.ci_low, row.ci_high) == (pytest.approx(0.3968, abs=5e-5), pytest.approx(0.8922, abs=5e-5))
    table = win_rate_frame(query_comparisons(store))
    assert table.iloc[0]["X win rate % (decisive)"] == "70.0" and table.iloc[0]["95% Wilson CI %"] == "39.7–89.2"
    assert wilson_interval(0, 0) is None
    assert wilson_interval(0, 4) == (0.0, pytest.approx(0.4899, abs=5e-5))   # z²/(n+z²) = 3.8415/7.8415


def test_same_model_two_decodings_are_labelled_by_what_differs(store):
    save_comparison(store, make(spans=[]))
    (row,) = win_rates(query_comparisons(store))
    labels = {row.system_x, row.system_y}
    assert labels == {"mt5-small (do_sample=True, seed=0)", "mt5-small (num_beams=4)"}
    assert row.judgements == 1 and (row.x_wins + row.y_wins) == 1


def test_preference_agreement_matches_a_hand_computation(store):
    """Three items, two annotators: (X, X), (X, Y), (tie, tie); a fourth item judged once does not count.
    Coincidences: o[X,X] = 2, o[X,Y] = o[Y,X] = 1, o[tie,tie] = 2; n_X = 3, n_Y = 1, n_tie = 2, n = 6.
    Nominal alpha = 1 − (n − 1)·Σ_{c≠k} o_ck / Σ_{c≠k} n_c·n_k = 1 − 5·2 / (2·(3·1 + 3·2 + 1·2)) = 1 − 10/22 = 6/11.
    The order shown differs between annotators: agreement is on systems, not on sides."""
    for item, (p1, p2) in enumerate([("X", "X"), ("X", "Y"), ("tie", "tie")]):
        save_comparison(store, judged(p1, "A", "Ana", item))
        save_comparison(store, judged(p2, "B", "Bo", item))
    save_comparison(store, judged("Y", "A", "Ana", 9))
    agreement = preference_agreement(query_comparisons(store))
    assert (agreement.items, agreement.annotators, agreement.judgements) == (3, 2, 6)
    assert agreement.alpha_nominal == pytest.approx(6 / 11)
    one = preference_agreement(query_comparisons(store, annotator="Ana"))
    assert one.alpha_nominal is None and "no item judged by two" in one.note


def test_compare_job_runs_both_systems_and_keeps_the_blind_order(store):
    inputs = [BatchInput(t) for t in ("שלום עולם", "Guten Tag", "你好")]
    systems = [{"model_id": "m", "decoding": {"num_beams": 1}}, {"model_id": "m", "decoding": {"num_beams": 4}}]
    with pytest.raises(ValueError, match="same system"):
        create_compare_job(store, inputs, task="summarization", systems=[systems[0], systems[0]])
    assert store.read("SELECT COUNT(*) FROM comparison_jobs")[0][0] == 0
    job = create_compare_job(store, inputs, task="summarization", systems=systems, rng=random.Random(1))
    calls = []

    def process(n, row):
        calls.append((n, row.index))
        if row.text == "Guten Tag" and len(calls) < 5:
            raise RuntimeError("boom")
        return f"{n}:{row.text}"
    assert run_compare_job(store, job.id, process) == (2, 1)
    assert run_compare_job(store, job.id, process) == (1, 0)       # resumes: only the failed row again
    rows = compare_rows(store, job.id)
    assert all(r.processed for r in rows)
    flips = [r.flipped for r in rows]
    assert flips == [r.flipped for r in compare_rows(store, get_compare_job(store, job.id).id)]
    row = rows[0]
    c = comparison_for_row(job, row, preference="A", annotator="Ana", protocol="esa", spans=[])
    shown_a = f"{2 if row.flipped else 1}:{row.text}"
    assert c.output_a == shown_a and c.system_a.decoding == systems[1 if row.flipped else 0]["decoding"]
    cmp_id = judge_row(store, job.id, 0, c)
    assert compare_rows(store, job.id)[0].comparison_id == cmp_id
    # deleting the comparison (hard delete of the row, as a purge would) puts the row back in the queue
    with store.transaction() as conn:
        conn.execute("DELETE FROM comparisons WHERE id=?", (cmp_id,))
    assert compare_rows(store, job.id)[0].comparison_id is None


def test_schema_check_constraint_refuses_a_bad_preference(store):
    save_comparison(store, make())
    with pytest.raises(sqlite3.IntegrityError):
        with store.transaction() as conn:
            conn.execute("UPDATE comparisons SET preference='maybe'")


def test_deleting_needs_the_owner_or_an_admin(store):
    cmp_id = save_comparison(store, make(), owner="amina")
    with pytest.raises(Refused, match="Only the annotator who saved it or an admin"):
        delete_as(store, Identity(user="bo", protected=True), cmp_id)
    with pytest.raises(Refused):
        delete_as(store, Identity(protected=True), cmp_id)            # nobody signed in
    assert get_comparison(store, cmp_id) is not None
    assert delete_as(store, Identity(user="amina", protected=True), cmp_id) is True
    assert store.read("SELECT deleted_by FROM comparisons WHERE id=?", (cmp_id,))[0][0] == "amina"
    other = save_comparison(store, make(annotator="Bo"), owner="bo")
    assert delete_as(store, Identity(user="root", admin=True, protected=True), other) is True
    assert delete_as(store, Identity(), "no-such-id") is False


def test_identical_systems_are_refused_before_anything_runs():
    req = ModelRequest("google/mt5-small", dtype="float32", device="cpu")
    with pytest.raises(UserError, match="same system"):
        check_pair("summarization", req, Decoding(num_beams=4), dataclasses.replace(req, device="cuda"),
                   Decoding(num_beams=4))                                       # the device does not count
    with pytest.raises(UserError, match="same system"):
        check_pair("classification", req, Decoding(num_beams=1), req, Decoding(num_beams=4))   # does not decode
    check_pair("summarization", req, Decoding(num_beams=1), req, Decoding(num_beams=4))
    check_pair("summarization", req, Decoding(), dataclasses.replace(req, dtype="bfloat16"), Decoding())


def test_run_pair_on_demo_checkpoints_draws_the_order_and_maps_it_back(tmp_path, store):
    """The Compare tab's work without a page: two decodings of the demo checkpoint, the order drawn by the rng,
    the comparison saved with each output next to the system that made it; a QA pair reads question and context."""
    ctx, _ = prepare(True, Settings(demo_dir=tmp_path / "demo"))
    source = ctx.assets.models["summarization"].default
    pickers = ((source, "auto", "cpu", "none"), (source, "auto", "cpu", "none"))
    short, long = Decoding(max_new_tokens=4), Decoding(max_new_tokens=12)
    with pytest.raises(UserError, match="same system"):
        run_pair(ctx, "summarization", {"text": "Hallo Welt"}, pickers, (short, short))
    with pytest.raises(UserError, match="text is empty"):
        run_pair(ctx, "summarization", {"text": " "}, pickers, (short, long))
    seen = set()
    for seed in range(6):
        pair = run_pair(ctx, "summarization", {"text": "שלום עולם, זה טקסט"}, pickers, (short, long),
                        rng=random.Random(seed))
        seen.add(pair.flipped)
        assert pair.flipped == (random.Random(seed).random() < 0.5)
        c = pair_comparison(pair, "A", "Ana", "esa", [], "")
        tokens = {c.system_a.decoding["max_new_tokens"], c.system_b.decoding["max_new_tokens"]}
        assert tokens == {4, 12}
        made_by = {4: pair.outputs[0], 12: pair.outputs[1]}
        assert c.output_a == made_by[c.system_a.decoding["max_new_tokens"]]
        assert c.output_b == made_by[c.system_b.decoding["max_new_tokens"]]
        assert c.input == "שלום עולם, זה טקסט"
    assert seen == {True, False}
    save_comparison(store, c)
    qa_source = ctx.assets.models["generative_qa"].default
    qa = run_pair(ctx, "generative_qa", {"question": "Wer?", "context": "Ada schrieb es."},
                  ((qa_source, "auto", "cpu", "none"),) * 2, (short, long))
    assert qa.input_text == "question: Wer? context: Ada schrieb es." and all(isinstance(o, str) for o in qa.outputs)


def test_a_compare_job_stops_before_its_next_row_and_resumes(store):
    from app.annotation.batch import StopRequests

    inputs = [BatchInput(t) for t in ("一", "二", "三", "四")]
    systems = [{"model_id": "m", "decoding": {"num_beams": 1}}, {"model_id": "m", "decoding": {"num_beams": 4}}]
    job = create_compare_job(store, inputs, task="summarization", systems=systems)
    stops = StopRequests()
    asked = stops.start(job.id)

    def process(n, row):
        if row.index == 1 and n == 2:
            stops.request(job.id)          # the Stop button pressed while row 2 runs
        return f"{n}:{row.text}"
    assert run_compare_job(store, job.id, process, should_stop=asked) == (2, 0)   # row 2 finishes, then it stops
    assert [r.processed for r in compare_rows(store, job.id)] == [True, True, False, False]
    stops.finish(job.id)
    assert stops.request(job.id) is False                                         # not running any more
    assert run_compare_job(store, job.id, process) == (2, 0)
    assert all(r.processed for r in compare_rows(store, job.id))
