"""A compare job's automatic metrics beside its human judgements, on a real SQLite store: references from the
file, corpus chrF++/BLEU (ROUGE for summaries) against sacrebleu on the same rows, the paired test, human
preferences mapped back through each row's A/B draw, and the page's handler."""
import sqlite3

import pytest
import sacrebleu

from app.annotation.batch import BatchInput, load_inputs
from app.annotation.comparisons import compare_rows, comparison_for_row, create_compare_job, judge_row, \
    run_compare_job
from app.annotation.job_metrics import compare_job_metrics, guess_language, human_preferences, render, score_metricx
from app.annotation.rights import OPEN, Identity
from app.annotation.schema import MIGRATIONS, migrate
from app.annotation.store import AnnotationStore
from app.annotation.tabs import compare
from metricx_util import tiny_metricx

SYSTEMS = ({"model_id": "demo/generation", "decoding": {"num_beams": 1}},
           {"model_id": "demo/generation", "decoding": {"num_beams": 4}})
REFS = ["The cat sat on the mat.", "It rained all day in the north.", "The museum opens at nine.",
        "Farmers sell dried mangoes in winter.", "A new bridge opens next month.", "She reads in the library.",
        "The train leaves from platform three.", "Prices rose by five percent.", "Children play in the park.",
        "The river flooded the old town."]
WEAK = ["cat mat", "rain north", "museum nine", "mangoes", "bridge month", "library", "train three",
        "prices percent", "park children", "river town old"]


def job_with_outputs(store, refs=REFS, task="summarization", one=None, two=None):
    job = create_compare_job(store, [BatchInput(f"input {i}", reference=r) for i, r in enumerate(refs)],
                             task=task, systems=list(SYSTEMS))
    one, two = one or list(refs), two or WEAK
    run_compare_job(store, job.id, lambda n, row: (one if n == 1 else two)[row.index])
    return job


def test_references_come_from_the_file(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("text,Reference\nHallo Welt,Hello world\nGuten Tag,\n", encoding="utf-8")
    assert load_inputs(path) == [BatchInput("Hallo Welt", reference="Hello world"), BatchInput("Guten Tag")]
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"text": "Hallo"}\n', encoding="utf-8")
    assert load_inputs(plain)[0].reference == ""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "Hallo", "reference": 3}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="`reference` must be text"):
        load_inputs(bad)


@pytest.mark.parametrize("texts,lang", [(["我们明天见面。"], "zh"), (["この店のラーメンはおいしい。"], "ja"),
                                        (["안녕하세요 여러분"], "ko"), (["สวัสดีครับ"], "th"),
                                        (["Guten Tag", "Привет"], None), ([""], None)])
def test_the_tokenizer_language_is_read_from_the_script(texts, lang):
    assert guess_language(texts) == lang


def test_corpus_scores_equal_sacrebleu_and_the_better_system_is_significant(tmp_path):
    with AnnotationStore(tmp_path / "m.db") as store:
        job = job_with_outputs(store, task="translation")
        m = compare_job_metrics(store, job.id)
    assert (m.rows, m.scored, m.lang) == (10, 10, None) and set(m.paired) == {"chrf", "bleu"}
    chrf = sacrebleu.corpus_chrf(WEAK, [REFS], word_order=2).score
    bleu = sacrebleu.corpus_bleu(WEAK, [REFS]).score
    assert m.corpus[1]["chrf"]["score"] == pytest.approx(chrf, abs=1e-9)
    assert m.corpus[1]["bleu"]["score"] == pytest.approx(bleu, abs=1e-9)
    assert m.corpus[0]["chrf"]["score"] == pytest.approx(100.0) and m.corpus[0]["bleu"]["score"] == pytest.approx(100)
    low, high = m.corpus[1]["chrf"]["low"], m.corpus[1]["chrf"]["high"]
    assert low <= chrf <= high and low < high
    assert m.paired["chrf"]["delta"] == pytest.approx(chrf - 100) and m.paired["chrf"]["significant"]
    assert len(m.sentences) == 10 and m.sentences[0]["chrf_1"] == pytest.approx(100)
    assert m.sentences[3]["chrf_2"] == pytest.approx(sacrebleu.sentence_chrf(WEAK[3], [REFS[3]], word_order=2).score)
    page = render(m)
    assert "chrF++" in page and "BLEU" in page and "(differ)" in page and "10 of 10 rows scored" in page


def test_summaries_add_rouge_and_rows_without_reference_are_left_out(tmp_path):
    refs = [*REFS[:6], "", "", "", ""]
    with AnnotationStore(tmp_path / "s.db") as store:
        job = job_with_outputs(store, refs=refs, one=list(REFS), two=list(REFS))
        m = compare_job_metrics(store, job.id)
    assert m.scored == 6 and {"rouge1", "rouge2", "rougeL"} <= set(m.paired)
    assert not m.paired["chrf"]["significant"] and m.paired["chrf"]["delta"] == 0   # the same outputs
    assert "no significant difference" in render(m)


def test_a_job_without_references_says_so(tmp_path):
    with AnnotationStore(tmp_path / "n.db") as store:
        job = job_with_outputs(store, refs=[""] * 3, one=["a", "b", "c"], two=["d", "e", "f"])
        m = compare_job_metrics(store, job.id)
    assert m.scored == 0 and "add a `reference` column" in render(m)


def test_human_preferences_are_counted_per_system_through_the_draw(tmp_path):
    with AnnotationStore(tmp_path / "h.db") as store:
        job = job_with_outputs(store)
        rows = compare_rows(store, job.id)
        # the annotator prefers system 2's output wherever it is shown, on rows 0-3; a tie on row 4
        for row in rows[:4]:
            side = "A" if row.flipped else "B"
            judge_row(store, job.id, row.index, comparison_for_row(job, row, preference=side, annotator="Dan"))
        judge_row(store, job.id, 4, comparison_for_row(job, rows[4], preference="tie", annotator="Dan"))
        counts = human_preferences(store, compare_rows(store, job.id))
        assert counts == {"judged": 5, "system_1": 0, "system_2": 4, "tie": 1, "both_bad": 0}
        assert "system 1 preferred 0, system 2 4, tie 1" in render(compare_job_metrics(store, job.id))


def test_the_page_shows_metrics_to_who_sees_all_and_not_to_a_blind_annotator(tmp_path):
    with AnnotationStore(tmp_path / "p.db") as store:
        job = job_with_outputs(store)
        shown = compare.cjob_pick(store, OPEN, job.id)
        assert "chrF++" in shown["metrics"] and "p (paired bootstrap)" in shown["metrics"]
        annotator = Identity(user="dan", admin=False, protected=True)
        assert compare.job_metrics_html(store, annotator, job.id) == ""


def test_v8_compare_rows_gain_an_empty_reference(tmp_path):
    path = tmp_path / "v8.db"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, MIGRATIONS[:8]) == 8
    conn.execute("INSERT INTO comparison_jobs (id, name, task, systems, source, total, created_at, owner) VALUES "
                 "('j', 'old', 'summarization', '[{}, {}]', '', 1, '2026-01-01', '')")
    conn.execute("INSERT INTO comparison_job_rows (job_id, idx, text, question, context, flipped) VALUES "
                 "('j', 0, 'kept', '', '', 0)")
    conn.close()
    with AnnotationStore(path) as store:
        (row,) = compare_rows(store, "j")
        assert (row.text, row.reference) == ("kept", "")


@pytest.fixture(scope="module")
def metricx(tmp_path_factory):
    return tiny_metricx(tmp_path_factory.mktemp("metricx"), REFS + WEAK)


@pytest.mark.parametrize("with_refs", [True, False])
def test_metricx_scores_both_systems_once_and_tests_the_difference(tmp_path, metricx, with_refs):
    from app.scoring import MetricXService
    from model import MT5Tokenizer
    from model.metricx import MT5ForRegression, score

    model_dir, tok = metricx
    service = MetricXService(str(model_dir), str(tok), "none")
    refs = REFS if with_refs else [""] * len(REFS)
    with AnnotationStore(tmp_path / "mx.db") as store:
        job = job_with_outputs(store, refs=refs, task="translation", one=list(REFS), two=list(WEAK))
        assert score_metricx(store, job.id, service) == 10
        assert score_metricx(store, job.id, service) == 0          # stored: not scored again
        rows = compare_rows(store, job.id)
        m = compare_job_metrics(store, job.id)
    model, tokenizer = MT5ForRegression.from_pretrained(model_dir), MT5Tokenizer.from_pretrained(tok)
    asked = [{"source": f"input {i}", "hypothesis": WEAK[i], "reference": refs[i]} for i in range(10)]
    expected = score(model, tokenizer, asked, qe=not with_refs).scores
    assert [r.metricx_2 for r in rows] == pytest.approx(expected, abs=1e-5)
    pair = m.paired["metricx"]
    assert pair["n"] == 10
    assert pair["delta"] == pytest.approx(sum(expected) / 10 - m.corpus[0]["metricx"]["score"], abs=1e-5)
    assert m.corpus[1]["metricx"]["low"] <= m.corpus[1]["metricx"]["score"] <= m.corpus[1]["metricx"]["high"]
    page = render(m)
    assert "MetricX (lower is better)" in page and ("chrF++" in page) == with_refs


def test_a_checkpoint_that_is_not_metricx_is_refused(tmp_path, metricx):
    from app.errors import UserError
    from app.scoring import load_metricx
    from model import MT5Config

    MT5Config(vocab_size=300, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4,
              architectures=["MT5ForConditionalGeneration"]).save_pretrained(tmp_path / "plain")
    with pytest.raises(UserError, match="not a MetricX checkpoint"):
        load_metricx(str(tmp_path / "plain"), str(metricx[1]))
